"""Running the CLI in-process and checking its one-line errors, shared by the hostile-input tests."""

from talkalike.cli import main


def run(capsys, *argv) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `talkalike ARGV...`."""
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_error(code: int, err: str, *words: str) -> str:
    """Assert exit 2 with a single `error:` line (no traceback) holding every word; returns that line."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert "Traceback" not in err and [line for line in lines if line.startswith("error: ")] == lines[-1:], err
    for word in words:
        assert word in lines[-1], (word, lines[-1])
    return lines[-1]
