"""A quiet run: libraries' output (Python prints and warnings, logging, tqdm, C-level writes, child processes)
goes to the log file; the project's own lines reach the terminal."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

SCRIPT = textwrap.dedent("""
    import logging, os, subprocess, sys, warnings
    from pathlib import Path
    from quantserve.progress import quiet_to, say
    say("before")
    with quiet_to(Path(sys.argv[1])):
        say("stage 1 of 2")
        print("a library's print")
        warnings.warn("a library's UserWarning")
        logging.getLogger("transformers").warning("a library's log line")
        os.write(2, b"a C library's write to fd 2\\n")
        subprocess.run([sys.executable, "-c", "import sys; print('a child on stdout'); "
                        "print('a child on stderr', file=sys.stderr)"], check=True)
        import tqdm
        for _ in tqdm.tqdm(range(3), desc="a tqdm bar"):
            pass
        say("stage 2 of 2")
    say("after")
    print("stdout is back")
""")


def test_quiet_sends_libraries_to_the_log_and_our_lines_to_the_terminal(tmp_path: Path):
    log = tmp_path / "run" / "run.log"
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(log)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines() == ["[quantserve] before", "[quantserve] stage 1 of 2",
                                        "[quantserve] stage 2 of 2", "[quantserve] after"]
    assert proc.stdout == "stdout is back\n"
    text = log.read_text()
    for noise in ("a library's print", "a library's UserWarning", "a library's log line",
                  "a C library's write to fd 2", "a child on stdout", "a child on stderr"):
        assert noise in text
    assert "a tqdm bar" not in text  # tqdm is switched off while quiet: its bars would only fill the log
    assert "stage 1 of 2" not in text
