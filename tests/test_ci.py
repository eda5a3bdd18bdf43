"""contrib/github/mailplan.yml, the workflow of docs/ci.md: the commands of its `run:` steps,
run as the runner runs them (`bash -e`), in a repository this test makes, with the
environment the workflow gives them; and .pre-commit-hooks.yaml."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from dnskit import NameServer, zone_text

from mailplan.compiler.pipeline import compile_site
from mailplan.zones.records import zones
from mailplan.zones.render import render

PROJECT = Path(__file__).resolve().parent.parent
WORKFLOW = yaml.safe_load((PROJECT / "contrib/github/mailplan.yml").read_text())
SARIF = json.loads((PROJECT / "tests/sarif/sarif-2.1.0-rtm.5.json").read_text())
# What the runner would put in each `${{ }}` of a step's env, per case of this test.
EXPRESSIONS = {
    "${{ github.base_ref }}": "main",
    "${{ contains(github.event.pull_request.labels.*.name, 'mailplan-unsafe-ok') }}": "false",
}
# The step that installs mailplan is not run here: the tests run in its installed copy.
INSTALL = "install mailplan"


def steps(job: str) -> dict[str, dict[str, Any]]:
    return {step["name"]: step for step in WORKFLOW["jobs"][job]["steps"] if step.get("run")}


def git(repository: Path, *arguments: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(repository), *arguments],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_SYSTEM": os.devnull},
    )
    return done.stdout


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """What actions/checkout leaves with fetch-depth 0: a clone of a repository whose main
    holds the example site, on a pull request's branch, with origin/main."""
    origin = tmp_path / "origin"
    shutil.copytree(PROJECT / "sites/example.com", origin / "sites/example.com")
    git(origin, "init", "-q", "-b", "main")
    git(origin, "add", ".")
    git(origin, "-c", "user.name=ci", "-c", "user.email=ci@example.com", "commit", "-qm", "site")
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(origin), str(clone)], check=True)
    git(clone, "checkout", "-q", "-b", "pull-request")
    return clone


def run_step(
    job: str, name: str, workspace: Path, expressions: dict[str, str] | None = None, **env: str
) -> tuple[subprocess.CompletedProcess[str], dict[str, str]]:
    """Run one step's script as the runner does, with the workflow's and the step's env;
    what it wrote to $GITHUB_OUTPUT."""
    step = steps(job)[name]
    given = {**EXPRESSIONS, **(expressions or {})}
    values = {**WORKFLOW["env"], **step.get("env", {})}
    for key, value in values.items():
        for expression, replacement in given.items():
            value = str(value).replace(expression, replacement)
        assert "${{" not in value, f"{name}: an expression this test does not know: {value}"
        values[key] = value
    output = workspace / "github-output"
    output.write_text("")
    environment = {
        **os.environ,
        **values,
        **env,
        "GITHUB_OUTPUT": str(output),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    done = subprocess.run(
        ["bash", "-e", "-c", step["run"]],
        cwd=workspace,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )
    outputs = dict(line.split("=", 1) for line in output.read_text().splitlines() if "=" in line)
    return done, outputs


def test_every_script_reads_expressions_from_env_only() -> None:
    """No `${{ }}` inside a script (the runner pastes it in, a script injection): scripts
    read what they need from env, which the steps set."""
    for job in WORKFLOW["jobs"]:
        for name, step in steps(job).items():
            assert "${{" not in step["run"], f"{job}/{name}"
    assert {name for job in WORKFLOW["jobs"] for name in steps(job)} == {
        INSTALL, "check", "check as SARIF", "test", "diff against the base branch", "dns check",
    }  # fmt: skip


def test_check_job(checkout: Path) -> None:
    done, _ = run_step("check", "check", checkout)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("::warning file=sites/example.com/router.cgr,line=")
    assert lines[-2] == "configuration OK"
    done, _ = run_step("check", "check as SARIF", checkout)
    assert done.returncode == 0, done.stderr
    log = json.loads((checkout / "mailplan.sarif").read_text())
    assert list(jsonschema.Draft4Validator(SARIF).iter_errors(log)) == []
    assert log["runs"][0]["results"]
    done, _ = run_step("check", "test", checkout)
    assert (done.returncode, done.stdout.splitlines()[-1]) == (0, "23 passed, 0 failed")


def test_check_job_on_a_broken_site(checkout: Path) -> None:
    site = checkout / "sites/example.com/site.yaml"
    site.write_text(site.read_text().replace("main_domain: example.com", "main_domain: 1"))
    done, _ = run_step("check", "check", checkout)
    assert done.returncode == 1
    assert done.stdout.startswith("::error file=sites/example.com/site.yaml,line=")
    done, _ = run_step("check", "check as SARIF", checkout)  # the file is written all the same
    assert done.returncode == 0, done.stderr
    log = json.loads((checkout / "mailplan.sarif").read_text())
    assert {r["level"] for r in log["runs"][0]["results"]} >= {"error"}


def commit(checkout: Path, edit: tuple[str, str]) -> None:
    site = checkout / "sites/example.com/site.yaml"
    text = site.read_text()
    assert edit[0] in text
    site.write_text(text.replace(edit[0], edit[1], 1))
    git(checkout, "-c", "user.name=ci", "-c", "user.email=ci@example.com", "commit", "-qam", "edit")


SAFE = ("max_recipients: 500", "max_recipients: 400")
UNSAFE = ("{host: mx1.example.com, priority: 10, ", "{host: mx1.example.com, priority: 15, ")


def test_diff_job_on_a_safe_change(checkout: Path) -> None:
    commit(checkout, SAFE)
    done, outputs = run_step("diff", "diff against the base branch", checkout)
    assert done.returncode == 0, done.stdout + done.stderr
    assert outputs == {"status": "1"}
    comment = (checkout / "mailplan-diff.md").read_text()
    assert comment.startswith("### mailplan diff\n\n**2 changes, 0 unsafe**\n")  # and digests
    assert "- limits.max\\_recipients: 500 -\\> 400\n" in comment


def test_diff_job_on_an_unsafe_change(checkout: Path) -> None:
    commit(checkout, UNSAFE)
    done, outputs = run_step("diff", "diff against the base branch", checkout)
    assert (done.returncode, outputs) == (3, {"status": "3"})
    assert done.stdout.startswith("::error title=mailplan diff::unsafe changes")
    assert "#### ⚠ Unsafe" in (checkout / "mailplan-diff.md").read_text()
    labelled = {next(iter(EXPRESSIONS.keys() - {"${{ github.base_ref }}"})): "true"}
    done, outputs = run_step("diff", "diff against the base branch", checkout, labelled)
    assert (done.returncode, outputs) == (0, {"status": "3"})


def test_diff_job_when_the_base_does_not_compile(checkout: Path) -> None:
    done, outputs = run_step(
        "diff", "diff against the base branch", checkout, {"${{ github.base_ref }}": "nothing"}
    )
    assert (done.returncode, outputs) == (2, {"status": "2"})


def test_dns_job(checkout: Path, tmp_path: Path) -> None:
    plan = compile_site(PROJECT / "sites/example.com").plan
    assert plan is not None
    texts = {z.name: zone_text(z.name, render(z, "bind")) for z in zones(plan)}
    with NameServer(tmp_path / "dns", texts) as server:
        done, _ = run_step("dns", "dns check", checkout, RESOLVER=server.address)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines()[-1].endswith(" present, 0 missing, 0 different")


def test_pre_commit_hooks() -> None:
    hooks = yaml.safe_load((PROJECT / ".pre-commit-hooks.yaml").read_text())
    assert [hook["id"] for hook in hooks] == ["mailplan-check", "mailplan-test"]
    for hook in hooks:
        assert hook["language"] == "python" and hook["pass_filenames"] is False
        # what pre-commit runs: the entry, then the args a repository gives (its site)
        command = [*hook["entry"].split(), str(PROJECT / "sites/example.com")]
        done = subprocess.run(
            [sys.executable, "-m", "mailplan", *command[1:]], capture_output=True, text=True
        )
        assert command[0] == "mailplan" and done.returncode == 0, done.stdout


def test_docs_show_the_workflow_as_it_is() -> None:
    doc = (PROJECT / "docs/ci.md").read_text()
    workflow = (PROJECT / "contrib/github/mailplan.yml").read_text()
    assert f"```yaml\n{workflow}```\n" in doc
