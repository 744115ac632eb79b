"""The Label Studio backend's project models (``sqsam_label_studio.learning``) without Label Studio.

Project models live in ``MODEL_DIR``; ``state.json`` names the one served, so a new process serves
it too; a project without one gets the base model. Annotation events count each annotation once.
The full loop (webhooks, export, fine-tune, swap) runs in ``tests/test_finetune_e2e.py``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("flask", reason="the label-studio extra (flask) is not installed")

from sqsam_core import SqueezeSAM  # noqa: E402
from sqsam_label_studio.errors import ConfigError  # noqa: E402
from sqsam_label_studio.learning import Learner, ProjectModels, TrainSettings, make_learner  # noqa: E402
from tests.conftest import build_fixture_model  # noqa: E402


@pytest.fixture
def base(tmp_path):
    return SqueezeSAM(build_fixture_model(tmp_path / "base.onnx"))


def test_an_installed_project_model_is_served_to_its_project_only_and_after_a_restart(tmp_path, base):
    models = ProjectModels(tmp_path / "models", base, SqueezeSAM)
    assert models.served("7") == (base, "fixture-click-echo")
    (tmp_path / "models" / "project-7").mkdir()
    candidate = build_fixture_model(tmp_path / "models" / "project-7" / "candidate-1.onnx", size=96)
    models.install("7", candidate, "fixture-click-echo+p7.1", 1, {"base": {"NoC@90": 5}, "candidate": {"NoC@90": 4}})
    served, version = models.served("7.1700000000")  # Label Studio's "<id>.<timestamp>"
    assert version == "fixture-click-echo+p7.1" and served is not base and served.spec.input_size == 96
    assert models.served("8") == (base, "fixture-click-echo")
    assert not candidate.exists() and (tmp_path / "models" / "project-7" / "model-1.onnx").is_file()

    second = build_fixture_model(tmp_path / "models" / "project-7" / "candidate-2.onnx", size=128)
    models.install("7", second, "fixture-click-echo+p7.2", 2, {})
    assert not (tmp_path / "models" / "project-7" / "model-1.onnx").exists()  # the replaced model is gone

    restarted = ProjectModels(tmp_path / "models", base, SqueezeSAM)  # a new process on the same folder
    served, version = restarted.served("7")
    assert version == "fixture-click-echo+p7.2" and served.spec.input_size == 128
    mask = served.predict(np.zeros((40, 60, 3), np.uint8), [(30.0, 20.0, True)]).mask
    assert mask[20, 30] and not mask[0, 0]  # it runs
    for bad in ("", "../7", "7/../../etc", None, "abc"):
        assert restarted.served(bad) == (base, "fixture-click-echo")


def test_a_broken_project_model_falls_back_to_the_base(tmp_path, base):
    models = ProjectModels(tmp_path / "models", base, SqueezeSAM)
    (tmp_path / "models" / "project-3").mkdir(parents=True)
    (tmp_path / "models" / "project-3" / "model-1.onnx").write_bytes(b"not onnx")
    models.write_state("3", {"model_file": "model-1.onnx", "model_version": "x+p3.1"})
    assert models.served("3") == (base, "fixture-click-echo")


def test_each_annotation_counts_once_and_a_job_waits_for_enough(tmp_path, base, monkeypatch):
    settings = TrainSettings(tmp_path / "models", min_annotations=3)
    learner = make_learner(base, loader=None, project_info=lambda project: {}, settings=settings)
    started = []
    monkeypatch.setattr(Learner, "_run", lambda self, project, number, counted: started.append((project, counted)))
    for annotation in (1, 1, 2, 2):  # created, then updated: two annotations
        answer = learner.on_event("ANNOTATION_CREATED", {"project": {"id": 5}, "annotation": {"id": annotation}})
    assert "2 new annotation(s)" in answer["message"] and not started
    learner.on_event("ANNOTATION_UPDATED", {"project": {"id": 5}, "annotation": {"id": 3}})
    learner.wait("5", 10)
    assert started == [("5", 3)]
    state = json.loads((tmp_path / "models" / "project-5" / "state.json").read_text())
    assert state["job"]["status"] == "queued" and state["jobs"] == 1
    assert "no project id" in learner.on_event("ANNOTATION_CREATED", {"annotation": {"id": 9}})["message"]
    health = learner.health()
    assert health["projects"]["5"]["new_annotations"] == 3 and health["min_annotations"] == 3


def test_training_settings_come_from_the_environment(tmp_path):
    assert TrainSettings.from_env({}) is None  # no MODEL_DIR: the backend does not learn
    settings = TrainSettings.from_env({"MODEL_DIR": str(tmp_path), "SQSAM_TRAIN_THREADS": "2",
                                       "SQSAM_TRAIN_MINUTES": "3.5", "SQSAM_TRAIN_MIN_ANNOTATIONS": "20"})
    assert (settings.threads, settings.minutes, settings.min_annotations) == (2, 3.5, 20)
    assert settings.pause_for_clicks == 0.5  # running fine-tunes pause for clicks by default
    assert settings.members == 1  # a job's short budget goes to one fine-tune
    assert TrainSettings.from_env({"MODEL_DIR": str(tmp_path), "SQSAM_TRAIN_MEMBERS": "2"}).members == 2
    for text, value in (("off", None), ("OFF", None), ("0", 0.0), ("2.5", 2.5)):
        env = {"MODEL_DIR": str(tmp_path), "SQSAM_TRAIN_PAUSE_FOR_CLICKS": text}
        assert TrainSettings.from_env(env).pause_for_clicks == value
    for bad in ({"SQSAM_TRAIN_THREADS": "two"}, {"SQSAM_TRAIN_MINUTES": "0"},
                {"SQSAM_TRAIN_PAUSE_FOR_CLICKS": "-1"}, {"SQSAM_TRAIN_PAUSE_FOR_CLICKS": "soon"},
                {"SQSAM_TRAIN_PAUSE_FOR_CLICKS": "nan"}, {"SQSAM_TRAIN_MEMBERS": "0"},
                {"SQSAM_TRAIN_STEPS": "-5"}):
        with pytest.raises(ConfigError):
            TrainSettings.from_env({"MODEL_DIR": str(tmp_path), **bad})
