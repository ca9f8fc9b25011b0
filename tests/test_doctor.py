"""`adapterstudio doctor`: real checks of this machine and library, with advice.

The command runs in this process (``cli_main``); the wheel check in .ci/run and the library's
end-to-end test run the real command."""

from __future__ import annotations

import json


def test_doctor_reports_every_area(cli_main, home, minilm_path):
    assert cli_main("base", "add", str(minilm_path), "--no-hash").returncode == 0
    r = cli_main("doctor", "--json")
    assert r.returncode in (0, 1), r.stderr
    data = json.loads(r.stdout)
    names = {c["name"] for c in data["checks"]}
    assert {"python", "settings", "torch", "transformers", "peft", "accelerate", "disk", "memory", "catalogue"} <= names
    cat = next(c for c in data["checks"] if c["name"] == "catalogue")
    assert cat["status"] == "ok" and "1 base models, 0 adapters" in cat["detail"]
    for c in data["checks"]:
        if c["status"] != "ok":
            assert c["advice"], c  # every problem comes with advice


def test_doctor_flags_a_broken_settings_file_and_a_damaged_catalogue(cli_main, home):
    home.mkdir(parents=True)
    (home / "settings.json").write_text("{broken")
    r = cli_main("doctor", "--no-torch", "--json")
    assert r.returncode == 1
    checks = {c["name"]: c for c in json.loads(r.stdout)["checks"]}
    assert checks["settings"]["status"] == "error" and "settings.json" in checks["settings"]["detail"]
    (home / "settings.json").unlink()
    (home / "catalogue.db").write_bytes(b"this is not a database" * 100)
    r = cli_main("doctor", "--no-torch", "--json")
    checks = {c["name"]: c for c in json.loads(r.stdout)["checks"]}
    assert r.returncode == 1 and checks["catalogue"]["status"] == "error"
    assert "catalogue.db" in checks["catalogue"]["detail"]


def test_token_never_printed(cli_main, home, monkeypatch):
    secret = "hf_SECRETSECRETSECRET1234"
    r = cli_main("doctor", "--no-torch", env={"HF_TOKEN": secret})
    assert secret not in r.stdout + r.stderr and "token configured" in r.stdout


def test_doctor_in_the_frozen_app_gives_advice_that_fits_it(home, monkeypatch):
    """In the PyInstaller app there is no pip: advice must not tell the user to pip install."""
    import sys

    from adapterstudio.services import doctor

    monkeypatch.setattr(sys, "frozen", True, raising=False)
    monkeypatch.setattr(doctor, "_gui_version", lambda: None)  # as in a build made without the gui extra
    checks = {c.name: c for c in doctor.run_checks(include_torch=False)}
    assert checks["python"].detail.endswith("(bundled in the application)")
    assert checks["gui"].status == doctor.WARN
    assert "pip" not in checks["gui"].advice and "build_app.sh" in checks["gui"].advice
    monkeypatch.setattr(sys, "frozen", False)
    assert "pip install" in {c.name: c for c in doctor.check_libraries()}["gui"].advice
