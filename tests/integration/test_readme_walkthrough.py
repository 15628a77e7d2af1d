"""The README's "first ten minutes", run as printed: a wrong command or figure in the README fails here.

Everything is read from README.md itself: every `$ ` line of the
walkthrough's console blocks, in order (the table rows printed under a
command must appear in its output), the `loyaltyctl rpc` call, grpcurl's
where grpcurl is installed, and the Python snippet of "Call it from the
storefront backend", run twice (the same answer both times). The stack is
started the way `make run` starts it (`tools/run_local.py`: four processes on
SQLite, a random dev token), in a temporary directory and on free ports
(`LOYALTY_RUN_VAR`, `LOYALTY_RUN_PORTS`) so a developer's own `make run` is
never touched; the README's default addresses are pointed at those ports.
About a minute and a half, most of it seeding the 1,000-customer demo: the
only test of what a newcomer does first.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from services.cli.report import cjk_font
from services.common.settings import DEFAULT_PORTS
from tests.support import free_port
from tools.supervise import wait_serving

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
SEED_MINUTES = 5


def section(text: str, heading: str) -> str:
    start = text.index(f"\n## {heading}")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def fenced_blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)


@dataclass(frozen=True)
class Step:
    command: str
    printed: tuple[str, ...] = ()  # table rows the README shows under the command

    @property
    def figures(self) -> list[list[str]]:
        """The cells of each printed row, without the table's spacing."""
        return [[cell.strip() for cell in row.strip("│ ").split("│")] for row in self.printed]


def walkthrough(readme: str) -> tuple[list[Step], list[str], str]:
    """The console steps, the bash blocks (`loyaltyctl rpc`, grpcurl) and the Python snippet."""
    tour = section(readme, "Your first ten minutes")
    steps: list[Step] = []
    for block in fenced_blocks(tour, "console"):
        for line in block.splitlines():
            line = line.strip()
            if line.startswith("$ "):
                steps.append(Step(line[2:].split("  #")[0].strip()))
            elif line.startswith("│") and steps:
                steps[-1] = Step(steps[-1].command, (*steps[-1].printed, line))
    shell = [block.replace("\\\n", " ") for block in fenced_blocks(tour, "bash")]
    [snippet] = fenced_blocks(section(readme, "Call it from the storefront backend (Python)"), "python")
    return steps, shell, snippet


def test_the_walkthrough_is_found_in_the_readme() -> None:
    """The extraction itself: if the README changes shape, this says so instead of running nothing."""
    steps, shell, snippet = walkthrough(README.read_text())
    commands = [s.command for s in steps]
    assert commands[0] == "loyaltyctl --shop demo demo seed --today 2026-11-23"
    assert [len(s.figures) for s in steps if s.printed] == [1, 1]
    for words in ("segments eval", "segments members champions", "points account", "report --out report"):
        assert any(words in c for c in commands), words
    assert any(block.lstrip().startswith("loyaltyctl rpc ") for block in shell)
    assert "RecordOrders" in snippet


@dataclass
class RunningLocal:
    var: Path
    env: dict[str, str]
    targets: dict[str, str]


@pytest.fixture(scope="module")
def local_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningLocal]:
    """`tools/run_local.py` as `make run` runs it, in a scratch directory, on free ports."""
    home = tmp_path_factory.mktemp("readme")
    var = home / "var"
    ports = {name: free_port() for name in DEFAULT_PORTS}
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOYALTY_")}
    env |= {
        "LOYALTY_RUN_VAR": str(var),
        "LOYALTY_RUN_PORTS": ",".join(f"{name}={port}" for name, port in ports.items()),
        "LOYALTY_SEED_DEMO": "0",
        "PYTHONPATH": str(ROOT),
    }
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "tools" / "run_local.py")],
        env=env,
        cwd=home,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        for name, port in ports.items():
            wait_serving(process, f"127.0.0.1:{port}", timeout=60, label=name)
        targets = {name: f"127.0.0.1:{port}" for name, port in ports.items()}
        reader_env = {k: v for k, v in os.environ.items() if not k.startswith("LOYALTY_")}
        reader_env |= {f"LOYALTY_{name.upper()}_TARGET": target for name, target in targets.items()}
        reader_env |= {
            "LOYALTY_TOKEN_FILE": str(var / "dev-token"),  # where `make run` put it; the reader's checkout finds it
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",  # .venv/bin
            "COLUMNS": "120",
        }
        yield RunningLocal(var, reader_env, targets)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(60)


def run(local: RunningLocal, command: str, cwd: Path, timeout: float = 120) -> str:
    done = subprocess.run(
        ["bash", "-c", command], env=local.env, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert done.returncode == 0, (command, done.stdout[-2000:], done.stderr[-2000:])
    return done.stdout


def with_our_addresses(text: str, local: RunningLocal) -> str:
    """The README's default addresses (127.0.0.1:5005x) pointed at this test's ports."""
    for name, port in DEFAULT_PORTS.items():
        text = text.replace(f"127.0.0.1:{port}", local.targets[name])
    return text


def test_every_command_of_the_walkthrough_runs_as_printed_and_prints_its_figures(local_stack: RunningLocal) -> None:
    steps, shell, snippet = walkthrough(README.read_text())
    home = local_stack.var.parent
    for step in steps:
        command = step.command
        if " report " in command and " --lang zh" in command and cjk_font() is None:
            command = command.replace("--lang zh", "--lang en")  # the README's own fallback without a CJK font
        out = run(local_stack, command, home, timeout=SEED_MINUTES * 60 if " demo seed" in command else 120)
        shown = [[cell.strip() for cell in line.strip("│ ").split("│")] for line in out.splitlines() if "│" in line]
        for row in step.figures:
            assert row in shown, (command, row, out)
    assert (home / "report").is_dir()
    first_rate = next(s for s in steps if s.figures).figures[0]
    for block in shell:
        if re.search(r"^\s*grpcurl ", block, flags=re.M):
            if shutil.which("grpcurl") is None:
                continue  # not packaged in Debian 12; the README says where it comes from
            block = with_our_addresses(block, local_stack)
        answer = json.loads(run(local_stack, block, home))
        rate = answer["rate"]
        assert [rate["numerator"], rate["denominator"]] == first_rate[:2]  # the same number over plain gRPC
    program = with_our_addresses(snippet, local_stack)
    answers = [run(local_stack, f"{shlex_quote(sys.executable)} -c {shlex_quote(program)}", home) for _ in range(2)]
    assert answers[0] == answers[1] == "1 0 0\n"  # recorded once; the retry gets the same answer


def shlex_quote(text: str) -> str:
    import shlex

    return shlex.quote(text)
