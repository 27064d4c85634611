from django.db import migrations
from django.utils import timezone

from disclosure.rdap_client import stored_network_refusal


def expire_registry_blocks(apps, schema_editor):
    """Networks cached before a registry's own block (an IANA-BLK, the RIPE NCC's ALLOCATED
    UNSPECIFIED /8s, a /8 registered to ARIN) was refused expire now, as 0003 did for too-wide
    ones, so the hosts they named the registry's abuse desk for are resolved again on the next run
    (they answer for nothing, not even as a fallback). The rule is the client's own: a migration
    that copied it would expire, on a database upgraded later, less than the client refuses."""
    Network = apps.get_model("disclosure", "Network")
    blocks = []
    rows = Network.objects.values_list("pk", "start_address", "end_address", "network_type", "name", "raw")
    for pk, start, end, network_type, name, raw in rows.iterator(chunk_size=500):
        if stored_network_refusal(start=start, end=end, network_type=network_type, name=name, raw=raw):
            blocks.append(pk)
    Network.objects.filter(pk__in=blocks).update(expires_at=timezone.now())


class Migration(migrations.Migration):
    dependencies = [
        ("disclosure", "0004_network_gone_at"),
    ]

    operations = [
        migrations.RunPython(expire_registry_blocks, migrations.RunPython.noop),
    ]
