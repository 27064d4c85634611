import ipaddress

from django.db import migrations
from django.utils import timezone

# As rdap_client.WIDEST_PREFIX when this was written: no registry gives an operator a network
# that does not fit in one IPv4 /8 or one IPv6 /16.
WIDEST_PREFIX = {4: 8, 6: 16}


def expire_too_wide_networks(apps, schema_editor):
    """Networks cached before answers wider than any registration were refused expire now, so the
    hosts they were the owner of are resolved again on the next run (they answer for nothing)."""
    Network = apps.get_model("disclosure", "Network")
    too_wide = []
    for pk, start, end in Network.objects.values_list("pk", "start_address", "end_address").iterator(chunk_size=500):
        first, last = ipaddress.ip_address(start), ipaddress.ip_address(end)
        if last not in ipaddress.ip_network((first, WIDEST_PREFIX[first.version]), strict=False):
            too_wide.append(pk)
    Network.objects.filter(pk__in=too_wide).update(expires_at=timezone.now())


class Migration(migrations.Migration):
    dependencies = [
        ("disclosure", "0002_network_answers"),
    ]

    operations = [
        migrations.RunPython(expire_too_wide_networks, migrations.RunPython.noop),
    ]
