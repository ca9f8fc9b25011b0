"""`adapterstudio doctor`: real checks of this machine and library, with advice."""

from __future__ import annotations

import json


def test_doctor_reports_every_area(cli, home, minilm_path):
    assert cli("base", "add", str(minilm_path), "--no-hash").returncode == 0
    r = cli("doctor", "--json")
    assert r.returncode in (0, 1), r.stderr
    data = json.loads(r.stdout)
    names = {c["name"] for c in data["checks"]}
    assert {"python", "settings", "torch", "transformers", "peft", "accelerate", "disk", "memory", "catalogue"} <= names
    cat = next(c for c in data["checks"] if c["name"] == "catalogue")
    assert cat["status"] == "ok" and "1 base models, 0 adapters" in cat["detail"]
    for c in data["checks"]:
        if c["status"] != "ok":
            assert c["advice"], c  # every problem comes with advice


def test_doctor_flags_a_broken_settings_file_and_a_damaged_catalogue(cli, home):
    home.mkdir(parents=True)
    (home / "settings.json").write_text("{broken")
    r = cli("doctor", "--no-torch", "--json")
    assert r.returncode == 1
    checks = {c["name"]: c for c in json.loads(r.stdout)["checks"]}
    assert checks["settings"]["status"] == "error" and "settings.json" in checks["settings"]["detail"]
    (home / "settings.json").unlink()
    (home / "catalogue.db").write_bytes(b"this is not a database" * 100)
    r = cli("doctor", "--no-torch", "--json")
    checks = {c["name"]: c for c in json.loads(r.stdout)["checks"]}
    assert r.returncode == 1 and checks["catalogue"]["status"] == "error"
    assert "catalogue.db" in checks["catalogue"]["detail"]


def test_token_never_printed(cli, home, monkeypatch):
    secret = "hf_SECRETSECRETSECRET1234"
    r = cli("doctor", "--no-torch", env={"HF_TOKEN": secret})
    assert secret not in r.stdout + r.stderr and "token configured" in r.stdout
