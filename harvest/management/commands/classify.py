"""python manage.py classify [--all] [--evaluate LABELS] [--json]"""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import CommandError, CommandParser

from harvest.classify import services
from harvest.classify.rules import RuleSet
from harvest.models import Service
from medexpo.lib.cli import positive_int
from medexpo.lib.commands import DatabaseCommand
from medexpo.lib.progress import Progress
from medexpo.lib.text import one_line


class Command(DatabaseCommand):
    help = "Classify stored services that are new or changed under the current rules (all of them with --all)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--all", action="store_true", help="re-classify every service (after a rules change)")
        parser.add_argument(
            "--evaluate",
            metavar="LABELS",
            help="after classifying, score the verdicts against an answer file (JSON lines)",
        )
        parser.add_argument(
            "--batch-size", type=positive_int, default=services.BATCH_SIZE, help="services per transaction"
        )
        parser.add_argument("--json", action="store_true", help="print one JSON object, no progress bar")

    def handle(self, *args: object, **options: Any) -> None:
        try:
            rules = services.classification_rules_load()
            if options["evaluate"]:  # a mistyped path is refused before the run, not after it
                services.classification_answer_file(path=options["evaluate"])
            summary = self._run(rules, options)
            result = {"run": summary.as_dict()}
            if options["evaluate"]:
                result["evaluation"] = services.classification_evaluate(path=options["evaluate"])
        except services.ClassificationError as exc:
            raise CommandError(str(exc)) from None
        if options["json"]:
            self.stdout.write(json.dumps(result))
            return
        self._print_run(result["run"])
        if "evaluation" in result:
            self._print_evaluation(result["evaluation"])

    def _run(self, rules: RuleSet, options: dict) -> services.RunSummary:
        if options["all"]:
            total = Service.objects.count()
        else:
            total = services.classification_pending_count(rules_version=rules.version)
        enabled = False if options["json"] else None
        with Progress(total=total, unit="service", desc="classify", enabled=enabled) as bar:
            return services.classification_run(
                everything=options["all"], rules=rules, batch_size=options["batch_size"], progress=bar.advance
            )

    def _print_run(self, s: dict) -> None:
        w = self.stdout.write
        what = "all services" if s["mode"] == "all" else "pending services and their hosts' others"
        w(f"Classified {s['classified']} ({what}) under rules {s['rules_version']} in {s['seconds']:.1f} s")
        if s["classified"]:
            why = s["why"]
            w(
                f"  {why['new']} new, {why['banner_changed']} with a changed banner, {why['record_newer']} with a"
                f" newer record, {why['rules_changed']} judged under other rules, {why['unchanged']} unchanged"
                + ("" if s["mode"] == "all" else " (judged again because another service on their host changed)")
            )
        if s["classified"]:
            split = ", ".join(f"{k} {v:.1f} s" for k, v in s["time_split"].items())
            w(f"  rate {s['rate_per_second']:,.0f} services/s ({split})")
        w(f"  {'class':<16}{'count':>10}")
        for cls, count in s["by_class"].items():
            w(f"  {cls:<16}{count:>10}")
        if s["by_category"]:
            w(f"  {'category':<16}{'count':>10}")
            for category, count in s["by_category"].items():
                w(f"  {category:<16}{count:>10}")
        w(f"  honeypots {s['honeypots']}")
        bad = s["unparseable"]
        if bad["count"]:
            w(f"  unreadable {bad['count']} (classified unknown/unparseable):")
            for example in bad["examples"]:
                w(f"    service {example['service']}: {example['reason']}")

    def _print_evaluation(self, e: dict) -> None:
        w = self.stdout.write
        w("")
        w(f"Evaluation against {e['answer_file']}: {e['matched']} labelled services matched")
        accuracy = "n/a" if e["accuracy"] is None else f"{e['accuracy']:.2%}"
        w(f"  overall accuracy (class) {accuracy}")
        for title, key in (("class", "per_class"), ("category", "per_category"), ("segment", "per_segment")):
            if e[key]:
                w(_metrics_table(title, e[key]))
        if e["honeypot"]:
            w(_metrics_table("honeypot", {"honeypot": e["honeypot"]}))
        w("  confusion matrix (rows: answer file, columns: verdict)")
        classes = list(e["confusion"])
        w("  " + f"{'':<14}" + "".join(f"{c:>13}" for c in classes))
        for actual, row in e["confusion"].items():
            w("  " + f"{actual:<14}" + "".join(f"{row[c]:>13}" for c in classes))
        if e["unmatched_count"]:
            w(f"  {e['unmatched_count']} answer lines not scored:")
            for problem in e["unmatched"][:20]:
                w(f"    line {problem['line']}: {one_line(problem['reason'])}")
            if e["unmatched_count"] > 20:
                w(f"    ... and {e['unmatched_count'] - 20} more (the first {len(e['unmatched'])} are in --json)")


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _metrics_table(title: str, rows: dict) -> str:
    lines = [f"  {title:<22}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>9}{'predicted':>11}"]
    for name, m in rows.items():
        label = one_line(str(name)) if name else "(none)"
        lines.append(
            f"  {label:<22}{_fmt(m['precision']):>10}{_fmt(m['recall']):>10}{_fmt(m['f1']):>10}"
            f"{m['support']:>9}{m['predicted']:>11}"
        )
    return "\n".join(lines)
