"""The bundled offline sample corpus: a deterministic generator of Shodan-format banners.

The corpus is synthetic. Banners are built the way Shodan records them (DICOM replies as raw
PDUs from pynetdicom's own encoder, HL7 ACKs in MLLP frames, HTTP heads), and each one's label
comes from how it was made, kept apart in labels.jsonl.
"""

from harvest.samplegen.stream import DEFAULT_SEED, iter_banners, iter_samples, write_banners

__all__ = ["DEFAULT_SEED", "iter_banners", "iter_samples", "write_banners"]
