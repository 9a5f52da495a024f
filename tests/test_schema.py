import operator

import pytest

from genctr.errors import ConfigError
from genctr.schema import LabelSpec, load_schema

GOOD = """
name: shop
label: {column: rating, rule: ">= 4"}
group: user
fields:
  - {name: user, kind: id}
  - {name: price, kind: numeric, transform: log1p, bins: 5}
  - {name: tags, kind: multi, separator: "|", max_len: 3}
  - {name: history, kind: sequence, separator: "^", max_len: 5, share_vocab: user}
segments:
  - {name: cold, field: user, max_train_rows: 0}
"""


def write(tmp_path, text):
    path = tmp_path / "schema.yaml"
    path.write_text(text)
    return path


def test_good_schema_loads(tmp_path):
    schema = load_schema(write(tmp_path, GOOD))
    assert schema.field_names == ["user", "price", "tags", "history"]
    assert schema.field("price").bins == 5
    assert schema.label.comparison() == (operator.ge, 4.0)


def test_unknown_key_names_key_and_file(tmp_path):
    path = write(tmp_path, GOOD.replace("bins: 5", "binz: 5"))
    with pytest.raises(ConfigError) as err:
        load_schema(path)
    assert "unknown key 'fields.1.binz'" in str(err.value)
    assert str(path) in str(err.value)


def test_option_of_another_kind_is_rejected(tmp_path):
    path = write(tmp_path, GOOD.replace("{name: user, kind: id}", "{name: user, kind: id, bins: 3}"))
    with pytest.raises(ConfigError, match="field 'user' of kind 'id' does not take option"):
        load_schema(path)


def test_list_field_needs_max_len(tmp_path):
    path = write(tmp_path, GOOD.replace(', max_len: 3', ''))
    with pytest.raises(ConfigError, match="'tags' of kind 'multi' needs 'max_len'"):
        load_schema(path)


def test_share_vocab_must_name_a_field(tmp_path):
    path = write(tmp_path, GOOD.replace("share_vocab: user", "share_vocab: item"))
    with pytest.raises(ConfigError, match="share_vocab 'item' is not a field"):
        load_schema(path)


def test_label_rule_is_parsed_not_evaluated():
    with pytest.raises(ValueError, match="not '<op> <number>'"):
        LabelSpec(column="y", rule="__import__('os')")
    op, value = LabelSpec(column="y", rule="!= -1").comparison()
    assert op is operator.ne and value == -1.0


def test_missing_schema_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_schema(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_schema(write(tmp_path, "name: [unclosed"))
