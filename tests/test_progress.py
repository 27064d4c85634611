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
