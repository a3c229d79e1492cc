"""Import paths of the flat layout keep working: each old module is an alias of where its names live now."""

import importlib

import pytest

import glactl
from glactl._moved import MOVED


def test_old_flat_modules_resolve_their_names() -> None:
    import glactl.checkpoint as checkpoint
    import glactl.sampling as sampling
    from glactl.inference.generation import Generation
    from glactl.runtime.threads import torch_threads
    from glactl.storage.checkpoint import load_model

    assert checkpoint.load_model is load_model
    assert sampling.Generation is Generation and sampling.torch_threads is torch_threads
    from glactl.saved_state import State  # noqa: F401 (the from-import form)


def test_old_modules_that_became_packages_resolve_their_names() -> None:
    from glactl.compare import run_compare
    from glactl.compare.runner import run_compare as new_run_compare
    from glactl.training import Trainer, TrainOptions
    from glactl.training.options import TrainOptions as NewTrainOptions
    from glactl.training.trainer import Trainer as NewTrainer

    assert (Trainer, TrainOptions, run_compare) == (NewTrainer, NewTrainOptions, new_run_compare)
    from glactl.data import load_training_data  # noqa: F401
    from glactl.inference import Int8Linear  # noqa: F401


def test_a_name_that_never_existed_says_where_the_code_lives() -> None:
    with pytest.raises(AttributeError, match="glactl.storage.checkpoint"):
        importlib.import_module("glactl.checkpoint").no_such_name  # noqa: B018
    with pytest.raises(ImportError):
        from glactl.training import no_such_name  # noqa: F401


@pytest.mark.parametrize("old", sorted(MOVED))
def test_every_listed_new_module_imports(old: str) -> None:
    for target in MOVED[old]:
        importlib.import_module(target)
    assert glactl.__version__
