"""Project settings and the promotion gate."""
import pytest

from domain.errors import Conflict, ValidationError
from domain.projects import ProjectSettings, check_promotion


def test_settings_default_to_private_and_ungated():
    s = ProjectSettings()
    assert s.store_chat_text is False and s.promotion_requires_better_eval is False


def test_settings_updates_are_validated():
    assert ProjectSettings().updated({"store_chat_text": True}).store_chat_text is True
    with pytest.raises(ValidationError, match="unknown setting"):
        ProjectSettings().updated({"colour": True})
    with pytest.raises(ValidationError, match="true or false"):
        ProjectSettings().updated({"store_chat_text": "yes"})


def test_without_the_gate_any_model_can_be_promoted():
    check_promotion(ProjectSettings(), "tutor", "ft:x", None, "base", None)


def test_the_gate_wants_an_eval_score_that_beats_the_current_target():
    gated = ProjectSettings(promotion_requires_better_eval=True)
    check_promotion(gated, "tutor", "ft:new", 1.2, "base", None)  # base has no score: any score beats it
    check_promotion(gated, "tutor", "ft:new", 1.2, "ft:old", 1.5)
    with pytest.raises(Conflict, match="has no evaluation score") as e:
        check_promotion(gated, "tutor", "ft:new", None, "ft:old", 1.5)
    assert e.value.status == 409 and e.value.code == "promotion_refused"
    with pytest.raises(Conflict, match="not better than"):
        check_promotion(gated, "tutor", "ft:new", 1.6, "ft:old", 1.5)
