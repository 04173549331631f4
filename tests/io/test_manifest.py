"""What names an analysis and what is compared before an event is written over."""

import pytest

from lightning_influence.config import AnalysisConfig, field_names
from lightning_influence.io.manifest import analysis_arguments, analysis_name, result_arguments


def _name(config: AnalysisConfig) -> str:
    return analysis_name(analysis_arguments(config, None))


def test_a_field_missing_from_old_arguments_counts_as_its_default():
    arguments = analysis_arguments(AnalysisConfig(), None)
    before = {k: v for k, v in arguments.items() if k != "restart_tol"}  # a config without it
    assert analysis_name(before) == _name(AnalysisConfig())
    assert result_arguments(before) == result_arguments(arguments)


def test_a_field_that_differs_from_its_default_changes_the_name():
    assert _name(AnalysisConfig(restart_tol=1e-2)) != _name(AnalysisConfig())
    assert _name(AnalysisConfig(restart_tol=1e-2)) != _name(AnalysisConfig(restart_tol=1e-3))
    assert _name(AnalysisConfig(top_k=10)) != _name(AnalysisConfig())
    assert _name(AnalysisConfig(top_k=20)) == _name(AnalysisConfig())  # the default


@pytest.mark.parametrize("role", ["execution", "schedule"])
def test_fields_of_how_and_when_never_change_the_name(role):
    config = AnalysisConfig()
    changed = {
        "hvp_cache": True,
        "every_n_epochs": 3,
        "num_workers": 2,
        "on_error": "raise",
        "projection": "grad",
        "example_chunk": 7,
    }
    overrides = {k: v for k, v in changed.items() if k in field_names(AnalysisConfig, role)}
    assert overrides
    assert _name(AnalysisConfig(**overrides)) == _name(config)


def test_every_field_has_a_role_and_help():
    import dataclasses

    for f in dataclasses.fields(AnalysisConfig):
        assert f.metadata.get("role") in ("result", "execution", "schedule", "display"), f.name
        assert f.metadata.get("help"), f.name


def test_the_loss_names_the_analysis():
    def my_loss(model, batch):  # pragma: no cover - never called
        raise AssertionError

    assert analysis_name(analysis_arguments(AnalysisConfig(), my_loss)) != _name(AnalysisConfig())
