from lightning_influence.config import AnalysisConfig
from lightning_influence.io.manifest import analysis_arguments, analysis_name, scoring_arguments


def _name(config: AnalysisConfig) -> str:
    return analysis_name(scoring_arguments(analysis_arguments(config, None)))


def test_a_newer_field_at_its_default_keeps_the_name_it_had_before():
    arguments = analysis_arguments(AnalysisConfig(), None)
    before = {k: v for k, v in arguments.items() if k != "restart_tol"}  # a config without it
    assert analysis_name(scoring_arguments(before)) == _name(AnalysisConfig())
    assert "restart_tol" not in scoring_arguments(arguments)


def test_a_newer_field_in_use_changes_the_name():
    assert _name(AnalysisConfig(restart_tol=1e-2)) != _name(AnalysisConfig())
    assert _name(AnalysisConfig(restart_tol=1e-2)) != _name(AnalysisConfig(restart_tol=1e-3))
    assert (
        scoring_arguments(analysis_arguments(AnalysisConfig(restart_tol=1e-2), None))["restart_tol"]
        == 1e-2
    )


def test_schedule_fields_do_not_change_the_name():
    assert _name(AnalysisConfig(hvp_cache=True, every_n_epochs=3)) == _name(AnalysisConfig())
