"""Owner resolution: pure parts (registry, attribution, contact choice) used by disclosure.services."""
