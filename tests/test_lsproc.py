"""Label Studio start-up failures say what failed: the process, its exit code, its last log lines."""

from __future__ import annotations

import os
import stat

import pytest

pytest.importorskip("requests", reason="the label-studio extra (requests) is not installed")

from sqsam_label_studio.lsproc import LS_VENV, LabelStudioError, LabelStudioServer, find_label_studio  # noqa: E402


def fake_label_studio(tmp_path, body: str) -> str:
    path = tmp_path / "bin" / "label-studio"
    path.parent.mkdir(parents=True)
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def test_a_crash_at_start_up_names_the_process_its_exit_code_and_log(tmp_path):
    exe = fake_label_studio(tmp_path, "for i in $(seq 1 40); do echo \"line $i\"; done\n"
                                      "echo \"TypeError: Unknown option 'send_default_pii'\"\nexit 3\n")
    server = LabelStudioServer(exe, tmp_path / "data")
    with pytest.raises(LabelStudioError) as info:
        server.start(timeout=30)
    message = str(info.value)
    assert exe in message and "exited with code 3" in message
    assert "send_default_pii" in message and "line 40" in message
    assert "line 1\n" not in message  # only the last lines
    assert server.process is None  # stopped, nothing left running


def test_a_server_that_never_answers_is_stopped_and_reported(tmp_path):
    exe = fake_label_studio(tmp_path, "echo starting\nexec sleep 600\n")
    server = LabelStudioServer(exe, tmp_path / "data")
    with pytest.raises(LabelStudioError, match=r"did not answer .* within 3 s") as info:
        server.start(timeout=3)
    assert "starting" in str(info.value) and server.process is None


def test_the_label_studio_venv_is_found_by_its_one_name(tmp_path, monkeypatch):
    monkeypatch.delenv("SQSAM_LABEL_STUDIO_BIN", raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    assert find_label_studio() is None
    exe = tmp_path / LS_VENV / "bin" / "label-studio"
    exe.parent.mkdir(parents=True)
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    assert find_label_studio() == str(exe) and os.path.isabs(find_label_studio())
