"""The progress bar helper with a real tqdm on an in-memory stream."""

from io import StringIO

from medexpo.lib.progress import Progress


def test_a_note_is_shown_without_a_bar() -> None:
    stream = StringIO()
    with Progress(total=10, unit="B", desc="run 1", enabled=False, stream=stream) as bar:
        bar.moved_to(5)
        bar.note("run 1 waits: another harvest is writing")
    assert stream.getvalue() == "run 1 waits: another harvest is writing\n"  # no bar, only the note


def test_a_note_goes_above_the_bar() -> None:
    stream = StringIO()
    with Progress(total=10, unit="B", desc="run 2", enabled=True, stream=stream) as bar:
        bar.moved_to(3)
        bar.note("run 2 waits: another harvest is writing")
    before, after = stream.getvalue().split("run 2 waits: another harvest is writing\n")
    assert "3/10" in after  # the bar is drawn again below the note, not broken by it


def test_a_terminal_that_reports_no_size_still_gets_a_bar(monkeypatch) -> None:
    """A pseudo-terminal nobody sized (`script -qc`, some CI runners and multiplexers) reports 0
    columns and rows; tqdm then drew nothing at all on it."""
    import os
    import sys

    master, slave = os.openpty()
    assert tuple(os.get_terminal_size(slave)) == (0, 0)
    with os.fdopen(slave, "w", encoding="utf-8") as stream:
        monkeypatch.setattr(sys, "stderr", stream)  # tqdm sizes its bar differently on stderr
        with Progress(total=10, unit="B", desc="run 3") as bar:
            bar.moved_to(5)
            stream.flush()
            os.set_blocking(master, False)
            try:
                shown = os.read(master, 65536).decode()
            except BlockingIOError:  # nothing was written
                shown = ""
    os.close(master)
    assert "run 3:" in shown and "/10 [" in shown  # the bar, drawn when it starts
