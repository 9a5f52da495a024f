"""hist_items / hist_len must only see the user's rows with a strictly earlier timestamp."""

import numpy as np

from genctr.data.sources.movielens import build_histories


def brute_force(user, ts, positive, length):
    n = len(user)
    refs = np.full((n, length), -1)
    hist_len = np.zeros(n, dtype=int)
    for r in range(n):
        earlier = [j for j in range(n) if user[j] == user[r] and ts[j] < ts[r]]  # time order kept
        hist_len[r] = len(earlier)
        liked = [j for j in earlier if positive[j]][-length:]
        refs[r, :len(liked)] = liked
    return refs, hist_len


def test_matches_brute_force_with_ties_and_interleaved_users():
    rng = np.random.default_rng(3)
    n = 400
    ts = np.sort(rng.integers(0, 60, n))  # many equal timestamps
    user = rng.integers(0, 7, n)
    positive = rng.random(n) < 0.6
    refs, hist_len = build_histories(user, ts, positive, 5)
    want_refs, want_len = brute_force(user, ts, positive, 5)
    np.testing.assert_array_equal(refs, want_refs)
    np.testing.assert_array_equal(hist_len, want_len)


def test_no_row_sees_itself_or_a_later_or_simultaneous_row():
    rng = np.random.default_rng(5)
    n = 2000
    ts = np.sort(rng.integers(0, 300, n))
    user = rng.integers(0, 20, n)
    refs, _ = build_histories(user, ts, rng.random(n) < 0.5, 8)
    rows, slots = np.nonzero(refs >= 0)
    seen = refs[rows, slots]
    assert np.all(ts[seen] < ts[rows])
    assert np.all(user[seen] == user[rows])


def test_hand_written_rows():
    # user 0: t=1 (+), t=2 (-), t=2 (+), t=5 (+); user 1: t=2 (+)
    user = np.array([0, 0, 1, 0, 0])
    ts = np.array([1, 2, 2, 2, 5])
    positive = np.array([True, False, True, True, True])
    refs, hist_len = build_histories(user, ts, positive, 2)
    assert refs.tolist() == [[-1, -1], [0, -1], [-1, -1], [0, -1], [0, 3]]
    assert hist_len.tolist() == [0, 1, 0, 1, 3]
