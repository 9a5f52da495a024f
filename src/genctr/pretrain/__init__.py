"""Generative pre-training. Importing the package registers the fine-tuned `hetegen` model in
the model registry (genctr.models.register_model)."""

from genctr.pretrain import hetegen  # noqa: F401  (registers the model)
