from django.db import migrations, models

# The reasons a search reported for a query, not a record (harvest.search.QUERY_FAILED and
# SHORT_RESULTS, spelled out: a migration must not change with the code).
QUERY_REASONS = ("query_failed", "short_results")


def move_query_errors(apps, schema_editor) -> None:  # noqa: ANN001 - Django's migration interface
    """Runs stored before kept their query errors among the rejected records."""
    HarvestRun = apps.get_model("harvest", "HarvestRun")  # noqa: N806
    for run in HarvestRun.objects.filter(source="search").only("rejected", "query_errors").iterator():
        moved = {reason: run.rejected[reason] for reason in QUERY_REASONS if reason in run.rejected}
        if moved:
            run.rejected = {k: v for k, v in run.rejected.items() if k not in moved}
            run.query_errors = moved
            run.save(update_fields=["rejected", "query_errors"])


def move_back(apps, schema_editor) -> None:  # noqa: ANN001
    HarvestRun = apps.get_model("harvest", "HarvestRun")  # noqa: N806
    for run in HarvestRun.objects.filter(source="search").only("rejected", "query_errors").iterator():
        if not run.query_errors:
            continue
        run.rejected = dict(sorted({**run.rejected, **run.query_errors}.items()))
        run.save(update_fields=["rejected"])


class Migration(migrations.Migration):
    dependencies = [
        ("harvest", "0007_classification_record_seen"),
    ]

    operations = [
        migrations.AddField(
            model_name="harvestrun",
            name="query_errors",
            field=models.JSONField(
                blank=True, default=dict, help_text="Search queries that failed or came back short, by reason."
            ),
        ),
        migrations.RunPython(move_query_errors, move_back),
    ]
