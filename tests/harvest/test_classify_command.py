"""The classify command: runs, summaries, --json, and --evaluate against an answer file."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from harvest.classify import services
from harvest.classify.rules import load_rules
from harvest.models import Classification, Host, Service
from harvest.services import harvest_execute, harvest_file_start
from tests.factories import banner, line, write_lines

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def run(*args: str) -> str:
    out = io.StringIO()
    call_command("classify", *args, stdout=out)
    return out.getvalue()


@pytest.fixture
def stored(db: None, tmp_path: Path) -> None:
    records = [banner(f"198.51.100.{i}", 80) for i in range(6)] + [
        banner("198.51.100.50", 104, data="", _shodan={"module": "dicom"}),
        banner("198.51.100.51", 22, data="SSH-2.0-OpenSSH_9.2p1\r\n", _shodan={"module": "ssh"}),
    ]
    path = write_lines(tmp_path / "in.jsonl", [line(r) for r in records])
    harvest_execute(run=harvest_file_start(path=path))


def test_it_classifies_pending_services_and_prints_a_summary(stored: None) -> None:
    text = run()

    version = load_rules().version
    assert f"Classified 8 (pending services and their hosts' others) under rules {version}" in text
    assert "  8 new, 0 with a changed banner, 0 with a newer record, 0 judged under other rules, 0 unchanged" in text
    assert "services/s" in text
    blank = Classification.objects.filter(category="blank").count()
    assert blank == 1
    assert f"{'blank':<16}{blank:>10}" in text
    for cls in ("medical", "non_medical", "unknown"):
        assert f"{cls:<16}{Classification.objects.filter(cls=cls).count():>10}" in text
    assert "Classified 0 (" in run()


def test_it_says_which_services_only_their_hosts_change_brought_back(stored: None, tmp_path: Path) -> None:
    run()
    sibling = banner("198.51.100.50", 2575, data="\x0bMSH|^~\\&|A|B|C|D|20260101||ACK|1|P|2.5\r\x1c\r")
    harvest_execute(run=harvest_file_start(path=write_lines(tmp_path / "more.jsonl", [line(sibling)])))

    text = run()

    assert "Classified 2 (pending services and their hosts' others)" in text
    assert "1 new, 0 with a changed banner, 0 with a newer record, 0 judged under other rules, 1 unchanged" in text
    assert "(judged again because another service on their host changed)" in text


def test_it_reclassifies_everything_with_all_and_prints_json(stored: None) -> None:
    run()
    data = json.loads(run("--all", "--json"))

    summary = data["run"]
    assert summary["mode"] == "all" and summary["classified"] == 8
    assert summary["why"] == {"new": 0, "banner_changed": 0, "record_newer": 0, "rules_changed": 0, "unchanged": 8}
    assert summary["rules_version"] == load_rules().version
    assert sum(summary["by_class"].values()) == 8
    assert summary["by_class"] == {
        c: Classification.objects.filter(cls=c).count() for c in ("medical", "non_medical", "unknown")
    }
    assert set(summary["time_split"]) == {"read", "parse", "engine", "write"}
    assert Classification.objects.count() == 8
    assert "evaluation" not in data


# --- evaluation --------------------------------------------------------------------------------


def _service(ip: str, port: int, cls: str | None, category: str = "", honeypot: bool = False) -> None:
    host = Host.objects.create(ip=ip, first_seen=NOW, last_seen=NOW)
    service = Service.objects.create(
        host=host, port=port, raw="{}", banner_hash="h", first_seen=NOW, last_seen=NOW, banner_since=NOW
    )
    if cls:
        Classification.objects.create(
            service=service,
            rules_version="hand.1",
            cls=cls,
            category=category,
            segment="medical_port" if cls == "medical" else "",
            honeypot=honeypot,
            banner_hash="h",
            classified_at=NOW,
        )


@pytest.fixture
def answers(db: None, tmp_path: Path) -> Path:
    """Six judged services against six labels; expected figures worked out by hand below."""
    _service("192.0.2.1", 104, "medical", "dicom")  # label medical/dicom (honeypot): right class
    _service("192.0.2.2", 2575, "medical", "hl7")  # label non_medical/known_service
    _service("192.0.2.3", 80, "non_medical", "known_service", honeypot=True)  # right
    _service("192.0.2.4", 443, "non_medical", "known_service")  # label medical/pacs_web
    _service("192.0.2.5", 104, "unknown", "blank")  # right
    _service("192.0.2.6", 23, "unknown", "unparseable")  # label non_medical/known_service
    _service("192.0.2.7", 8080, None)  # never classified
    lines = [
        {"ip": "192.0.2.1", "port": 104, "transport": "tcp", "class": "medical", "category": "dicom", "honeypot": True},
        {"ip": "192.0.2.2", "port": 2575, "class": "non_medical", "category": "known_service", "honeypot": False},
        {"ip": "192.0.2.3", "port": 80, "class": "non_medical", "category": "known_service", "honeypot": False},
        "not json at all",
        {"ip": "192.0.2.4", "port": 443, "class": "medical", "category": "pacs_web", "honeypot": False},
        {"ip": "192.0.2.5", "port": 104, "class": "unknown", "category": "blank", "honeypot": False},
        {"ip": "192.0.2.6", "port": 23, "class": "non_medical", "category": "known_service", "honeypot": False},
        {"ip": "192.0.2.9", "port": 104, "class": "medical", "category": "dicom"},  # no such service
        {"ip": "192.0.2.7", "port": 8080, "class": "unknown", "category": "blank"},  # not classified
        {"ip": "192.0.2.1", "port": 104, "class": "unknown", "category": "blank"},  # duplicate
        {"ip": "192.0.2.5", "port": 104, "class": "benign"},  # bad class
        {"ip": "999.1.1.1", "port": 104, "class": "medical"},  # bad address
    ]
    path = tmp_path / "labels.jsonl"
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return path


def test_evaluation_figures_match_the_hand_computed_ones(answers: Path) -> None:
    e = services.classification_evaluate(path=answers)

    assert e["matched"] == 6
    # Correct classes: .1, .3, .5 -> 3 of 6.
    assert e["accuracy"] == 0.5
    assert e["confusion"] == {
        "medical": {"medical": 1, "non_medical": 1, "unknown": 0},
        "non_medical": {"medical": 1, "non_medical": 1, "unknown": 1},
        "unknown": {"medical": 0, "non_medical": 0, "unknown": 1},
    }
    medical, non_medical, unknown = (e["per_class"][c] for c in ("medical", "non_medical", "unknown"))
    # medical: predicted {.1, .2}, labelled {.1, .4}: 1 right -> P 1/2, R 1/2, F1 1/2.
    assert (medical["precision"], medical["recall"], medical["f1"]) == (0.5, 0.5, 0.5)
    # non_medical: predicted {.3, .4}, labelled {.2, .3, .6} -> P 1/2, R 1/3, F1 2*(1/6)/(5/6) = 0.4.
    assert (non_medical["precision"], non_medical["recall"], non_medical["f1"]) == (0.5, 0.3333, 0.4)
    assert (non_medical["support"], non_medical["predicted"], non_medical["true_positives"]) == (3, 2, 1)
    # unknown: predicted {.5, .6}, labelled {.5} -> P 1/2, R 1, F1 2/3.
    assert (unknown["precision"], unknown["recall"], unknown["f1"]) == (0.5, 1.0, 0.6667)

    cat = e["per_category"]
    assert (cat["dicom"]["precision"], cat["dicom"]["recall"]) == (1.0, 1.0)
    assert (cat["known_service"]["precision"], cat["known_service"]["recall"]) == (0.5, 0.3333)
    assert (cat["hl7"]["precision"], cat["hl7"]["recall"]) == (0.0, None)  # predicted once, never labelled
    assert (cat["pacs_web"]["precision"], cat["pacs_web"]["recall"]) == (None, 0.0)  # labelled once, never found
    assert (cat["unparseable"]["precision"], cat["blank"]["recall"]) == (0.0, 1.0)
    assert e["accuracy_by_field"]["category"] == 0.5  # .1, .3, .5
    # Honeypots: labelled {.1}, flagged {.3} -> nothing right.
    assert (e["honeypot"]["precision"], e["honeypot"]["recall"], e["honeypot"]["f1"]) == (0.0, 0.0, 0.0)
    # Segments are absent from the labels: not scored rather than counted wrong.
    assert e["per_segment"] == {} and e["accuracy_by_field"]["segment"] is None


def test_evaluation_reports_every_line_it_could_not_score(answers: Path) -> None:
    e = services.classification_evaluate(path=answers)

    assert [(p["line"], p["reason"].split(" ")[0]) for p in e["unmatched"]] == [
        (4, "not"),
        (8, "no"),
        (9, "service"),
        (10, "duplicate"),
        (11, "class"),
        (12, "bad"),
    ]
    assert e["unmatched_count"] == 6
    reasons = {p["line"]: p["reason"] for p in e["unmatched"]}
    assert reasons[8] == "no stored service 192.0.2.9:104/tcp"
    assert reasons[9] == "service 192.0.2.7:8080/tcp is not classified"
    assert "'benign'" in reasons[11]


def test_evaluation_counts_unmatched_lines_beyond_those_it_lists(answers: Path, monkeypatch) -> None:
    monkeypatch.setattr(services, "MAX_PROBLEMS", 2)
    e = services.classification_evaluate(path=answers)
    assert e["unmatched_count"] == 6
    assert [p["line"] for p in e["unmatched"]] == [4, 10]  # the first two found: unreadable, duplicate


def test_the_command_prints_the_evaluation(answers: Path) -> None:
    # The hand-made verdicts are not from the engine: --evaluate classifies pending services first,
    # which here means all of them, so score what the engine says instead of the fixture's verdicts.
    data = json.loads(run("--evaluate", str(answers), "--json"))
    assert data["run"]["classified"] == 7
    assert data["evaluation"]["matched"] == 7
    assert len(data["evaluation"]["unmatched"]) == 5

    text = run("--evaluate", str(answers))
    assert "Classified 0 (" in text
    assert "7 labelled services matched" in text
    assert "confusion matrix (rows: answer file, columns: verdict)" in text
    assert "precision" in text and "recall" in text
    assert "line 4: not valid JSON" in text
    assert "line 8: no stored service 192.0.2.9:104/tcp" in text


def test_the_command_says_when_the_answer_file_is_missing(db: None, tmp_path: Path) -> None:
    with pytest.raises(CommandError, match="no such answer file"):
        run("--evaluate", str(tmp_path / "missing.jsonl"))


def test_export_services_prints_the_verdict_columns(stored: None, capsys: pytest.CaptureFixture) -> None:
    run()
    capsys.readouterr()
    call_command("export_services")  # writes to standard output itself
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]

    assert len(rows) == 8
    blank = next(r for r in rows if r["ip"] == "198.51.100.50")
    assert (blank["class"], blank["category"], blank["honeypot"]) == ("unknown", "blank", False)
    ssh = next(r for r in rows if r["port"] == 22)
    stored_ssh = Classification.objects.get(service__port=22)
    assert (ssh["class"], ssh["category"], ssh["segment"]) == (stored_ssh.cls, stored_ssh.category, stored_ssh.segment)
    assert ssh["evidence"] == [{"rule": e["rule"], "excerpt": e["excerpt"]} for e in stored_ssh.evidence]


def test_invalid_rules_stop_the_run_with_the_file_and_rule_named(db: None, tmp_path: Path) -> None:
    (tmp_path / "bad.toml").write_text(
        'version = "1"\n[[rule]]\nid = "bad.nested"\nclass = "medical"\ncategory = "dicom"\n'
        'fields = ["data"]\npattern = "(a+)+"\n'
    )
    with pytest.raises(services.ClassificationError, match=r"bad\.toml: bad\.nested: .*quantif"):
        services.classification_rules_load(directory=tmp_path)


def _labels(tmp_path: Path, lines: list[bytes]) -> Path:
    path = tmp_path / "labels.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def test_evaluation_rejects_unknown_categories_segments_and_honeypots(db: None, tmp_path: Path) -> None:
    _service("192.0.2.1", 104, "medical", "dicom")
    good = {"ip": "192.0.2.1", "port": 104, "class": "medical"}
    path = _labels(
        tmp_path,
        [
            json.dumps(good | {"category": "\x1b]0;pwned\x07\x1b[2Jevil"}).encode(),
            json.dumps(good | {"segment": "hospital"}).encode(),
            json.dumps(good | {"category": {"a": [1]}}).encode(),
            json.dumps(good | {"honeypot": "yes"}).encode(),
            json.dumps(good | {"class": ["medical"]}).encode(),
            json.dumps(good | {"category": "dicom", "segment": "medical_port", "honeypot": False}).encode(),
        ],
    )

    e = services.classification_evaluate(path=path)

    assert e["matched"] == 1
    reasons = {p["line"]: p["reason"] for p in e["unmatched"]}
    assert reasons[1].startswith("category must be one of ") and "'\\x1b]0;pwned\\x07\\x1b[2Jevil'" in reasons[1]
    assert reasons[2].startswith("segment must be one of ") and "'hospital'" in reasons[2]
    assert reasons[3].startswith("category must be one of ")
    assert reasons[4].startswith("honeypot must be one of True, False")
    assert reasons[5].startswith("class must be one of ")
    assert not [r for r in reasons.values() if "\x1b" in r or "\x07" in r]


def test_the_command_prints_no_control_characters_from_the_answer_file(db: None, tmp_path: Path) -> None:
    _service("192.0.2.1", 104, "medical", "dicom")
    path = _labels(
        tmp_path,
        [
            json.dumps(
                {"ip": "192.0.2.1", "port": 104, "class": "medical", "category": "\x1b]0;pwned\x07evil"}
            ).encode(),
            json.dumps({"ip": "\u202e1.2.0.291\x1b[2J", "port": 104, "class": "medical"}).encode(),
        ],
    )

    text = run("--evaluate", str(path))

    assert "line 1: category must be one of" in text
    assert "line 2: bad ip" in text
    assert not [c for c in text if not c.isprintable() and c != "\n"]


def test_evaluation_reads_an_answer_file_that_starts_with_a_bom(db: None, tmp_path: Path) -> None:
    _service("192.0.2.1", 104, "medical", "dicom")
    path = _labels(
        tmp_path, [b"\xef\xbb\xbf" + json.dumps({"ip": "192.0.2.1", "port": 104, "class": "medical"}).encode()]
    )

    e = services.classification_evaluate(path=path)

    assert (e["matched"], e["unmatched_count"]) == (1, 0)


@pytest.mark.parametrize("size", ["0", "-1"])
def test_it_refuses_a_batch_size_below_one(stored: None, size: str) -> None:
    """0 classified nothing and reported success; -1 ended in a traceback."""
    with pytest.raises(CommandError, match="--batch-size: must be 1 or more"):
        run("--all", "--batch-size", size)
    assert not Classification.objects.exists()


def test_f1_is_zero_when_nothing_is_right_and_exact_from_the_counts() -> None:
    """F1 was n/a for a class labelled but never found (or found but never right), the same as
    for a class with no data, and was computed from the rounded precision and recall."""
    tally = services.EvaluationTally()
    for label, verdict in [("medical", "medical")] + [("medical", "unknown")] * 6 + [("non_medical", "unknown")]:
        tally.add({"class": label}, {"class": verdict})

    per_class = services.evaluation_metrics(tally=tally)["per_class"]

    medical, non_medical, unknown = (per_class[c] for c in ("medical", "non_medical", "unknown"))
    assert (medical["precision"], medical["recall"], medical["f1"]) == (1.0, 0.1429, 0.25)  # 2*1/(1+7)
    assert (non_medical["precision"], non_medical["recall"], non_medical["f1"]) == (None, 0.0, 0.0)
    assert (unknown["precision"], unknown["recall"], unknown["f1"]) == (0.0, None, 0.0)


def test_a_missing_answer_file_is_refused_before_classifying(stored: None, tmp_path: Path) -> None:
    """A mistyped --evaluate path was found only after the whole run had classified everything pending."""
    with pytest.raises(CommandError, match="no such answer file"):
        run("--evaluate", str(tmp_path / "labels.jsonl.typo"))
    assert not Classification.objects.exists()
