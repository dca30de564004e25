"""``vesper check``: exit 0 for a sound store, 1 with one line per problem for a damaged
one, 2 for usage errors; progress on stderr; never a change to the file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.store import damage
from vesper.cli import check as cli_check
from vesper.cli.main import main
from vesper.store import open_store

RUN_TIMEOUT_S = 120


def check(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vesper", "check", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )


@pytest.fixture
def db(tmp_path: Path) -> Path:
    """A closed store of 30 changesets at ``data/N1.db``, all verified (checkpoint)."""
    path = tmp_path / "data" / "N1.db"
    with open_store(f"sqlite:///{path}", "N1") as store:
        for i in range(30):
            store.create({"id": f"o{i}", "text": "z" * 100})
        store.verify_chain()
    return path


def test_a_sound_store_exits_0_with_a_summary(db: Path, tmp_path: Path) -> None:
    done = check("data/N1.db", cwd=tmp_path)
    assert done.returncode == 0, done
    assert len(done.stdout.splitlines()) == 1 and "data/N1.db: sound" in done.stdout
    assert "30 changesets of 1 origin and 0 pending" in done.stdout
    assert "integrity_check" in done.stderr and "30 changesets verified" in done.stderr


def test_the_config_and_url_forms_find_the_same_file(db: Path, tmp_path: Path) -> None:
    (tmp_path / "node.conf").write_text("branch_id = 'N1'\nwork_dir = 'data'\n")
    assert check("--config", "node.conf", cwd=tmp_path).returncode == 0
    assert check("sqlite:///data/N1.db", cwd=tmp_path).returncode == 0


def test_an_altered_changeset_is_found_whatever_the_checkpoint(db: Path, tmp_path: Path) -> None:
    assert '"N1":[30,' in (damage.meta(db, "chain_checkpoint") or "")
    damage.alter(db, "N1.12")
    before = db.read_bytes()
    done = check(str(db), cwd=tmp_path)
    assert done.returncode == 1, done
    lines = done.stdout.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(f"{db}: changeset N1.12 does not match the chain")
    assert lines[1].startswith(f"{db}: damaged, 1 problem ")
    assert db.read_bytes() == before  # read only


@pytest.mark.parametrize(
    ("spoil", "needle"),
    [(damage.overwrite_tail, "malformed"), (damage.overwrite_header, "not a database")],
)
def test_a_damaged_file_exits_1(db: Path, tmp_path: Path, spoil: object, needle: str) -> None:
    spoil(db)  # type: ignore[operator]
    done = check(str(db), cwd=tmp_path)
    assert done.returncode == 1, done
    assert needle in done.stdout and "damaged" in done.stdout.splitlines()[-1]


def test_many_problems_are_listed_up_to_a_bound(db: Path, tmp_path: Path) -> None:
    for i in range(1, 31):
        damage.alter(db, f"N1.{i}", lambda body: body.update(prev="ab" * 32))
    done = check(str(db), cwd=tmp_path)
    assert done.returncode == 1
    lines = done.stdout.splitlines()
    # N1.1 names a prev, 29 links are broken, the head and the checkpoint differ.
    assert len(lines) == 32 + 1 and "damaged, 32 problems" in lines[-1]


def test_past_the_bound_only_the_number_of_problems_is_given(
    db: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for i in range(2, 31):
        damage.alter(db, f"N1.{i}", lambda body: body.update(prev="ab" * 32))
    monkeypatch.setattr(cli_check, "MAX_PROBLEMS", 5)
    assert main(["check", str(db)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 5 + 2
    assert lines[5] == f"{db}: ... and 26 more problems"


def test_it_works_beside_a_running_store(db: Path, tmp_path: Path) -> None:
    with open_store(f"sqlite:///{db}", "N1") as store:
        store.create({"id": "live"})
        done = check(str(db), cwd=tmp_path)
        assert done.returncode == 0, done
        assert "31 changesets" in done.stdout


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["missing.db"], "no such file"),
        ([], "not both"),
        (["x.db", "--config", "node.conf"], "not both"),
        (["mem://"], "in-memory"),
        (["--config", "mem.conf"], "in-memory"),
        (["plain.db"], "not a Vesper store"),
        (["--bogus"], "unrecognized"),
    ],
)
def test_usage_errors_exit_2(tmp_path: Path, args: list[str], needle: str) -> None:
    (tmp_path / "mem.conf").write_text("storage_url = 'mem://'\n")
    damage.connect(tmp_path / "plain.db").execute("CREATE TABLE t (x)").connection.close()
    done = check(*args, cwd=tmp_path)
    assert done.returncode == 2, done
    assert needle in done.stderr
