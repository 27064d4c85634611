"""The Dutch healthcare registry (harvest/data/nl_healthcare.toml), read once into frozen dataclasses."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import harvest

REGISTRY_PATH = Path(harvest.__file__).resolve().parent / "data" / "nl_healthcare.toml"
KNOWN_KEYS = {"name", "kind", "city", "domains", "aliases"}
# The registry's kinds -> Organisation.Kind values.
KIND_MAP = {"umc": "umc", "hospital": "hospital", "specialist": "care_provider"}


@dataclass(frozen=True)
class RegistryOrganisation:
    name: str
    kind: str  # an Organisation.Kind value
    city: str
    domains: tuple[str, ...]
    aliases: tuple[str, ...]

    @property
    def key(self) -> str:
        return f"registry:nl_healthcare:{self.name}"


class RegistryError(ValueError):
    pass


@lru_cache(maxsize=4)
def load_registry(path: Path = REGISTRY_PATH) -> tuple[RegistryOrganisation, ...]:
    with open(path, "rb") as handle:
        data = tomllib.load(handle)
    organisations = []
    for position, entry in enumerate(data.get("organisation", []), start=1):
        unknown = set(entry) - KNOWN_KEYS
        if unknown or not entry.get("name"):
            raise RegistryError(f"{path.name}: organisation {position}: unknown keys {sorted(unknown)} or no name")
        organisations.append(
            RegistryOrganisation(
                name=entry["name"],
                kind=KIND_MAP.get(entry.get("kind", ""), "care_provider"),
                city=entry.get("city", ""),
                domains=tuple(d.lower().strip(".") for d in entry.get("domains", [])),
                aliases=tuple(entry.get("aliases", [])),
            )
        )
    return tuple(organisations)
