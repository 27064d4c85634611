"""Query plans: the shipped files load, read the shared registries, and bad files are refused."""

from __future__ import annotations

import gzip
import json
import re
import tomllib
from pathlib import Path

import pytest

from harvest.plans import DATA_DIR, PlanError, country_filter, plan_load, plan_names
from tests.conftest import ROOT
from tests.standins.shodan_server import matches, parse_query

SHIPPED = ["devices", "hospitals", "medical", "ports", "software"]


def _registry(name: str) -> dict:
    return tomllib.loads((DATA_DIR / name).read_text())


def _write(tmp_path: Path, text: str, name: str = "custom") -> str:
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("name", SHIPPED)
def test_it_loads_every_shipped_plan(name: str) -> None:
    plan = plan_load(name=name)
    assert plan.name == name
    assert plan.description
    assert plan.queries
    queries = [q.query.lower() for q in plan.queries]
    assert len(queries) == len(set(queries))
    assert all("country:" not in q for q in queries)


def test_it_lists_the_shipped_plans() -> None:
    assert set(SHIPPED) <= set(plan_names())


def test_ports_plan_reads_appendix_b_from_the_shared_registry() -> None:
    ports = _registry("medical_ports.toml")["port"]
    want = {f"port:{p['port']}" for p in ports if not p.get("hint_only")}
    got = {q.query for q in plan_load(name="ports").queries}
    assert got == want
    assert {"port:104", "port:2575", "port:11112", "port:51244"} <= got
    assert "port:80" not in got  # a hint only: alone it matches most web servers


def test_hospitals_plan_covers_every_domain_and_word_of_the_registry() -> None:
    registry = _registry("nl_healthcare.toml")
    queries = {q.query for q in plan_load(name="hospitals").queries}
    for org in registry["organisation"]:
        for domain in org["domains"]:
            assert f"hostname:{domain}" in queries
        assert f'org:"{org["name"].replace(chr(34), "")}"' in queries
    for word in registry["words"]:
        assert f'"{word}"' in queries
    assert 'org:"AMC"' not in queries  # short aliases match unrelated organisations


def test_software_and_devices_plans_name_the_studys_products() -> None:
    software = {q.label for q in plan_load(name="software").queries}
    devices = {q.label for q in plan_load(name="devices").queries}
    for name in ["Orthanc", "dcm4chee archive", "Horos", "OsiriX", "ClearCanvas", "MedDream", "OpenEMR", "OpenMRS"]:
        assert name in software
    assert {"Mirth Connect", "GNU Health", "Alphatron / VISUS JiveX", "OHIF Viewer", "Sectra"} <= software
    for label in ["BD / CareFusion Alaris", "Hospira Plum A+", "ICU Medical Plum 360", "Baxter Sigma Spectrum"]:
        assert label in devices
    assert {"B. Braun SpaceStation", "Eitan / Q Core Sapphire", "Philips IntelliVue"} <= devices


def test_the_plans_find_the_web_pages_that_name_their_products_as_shodan_searches() -> None:
    """Shodan looks for a bare word in a banner's main text (`data`) only, which for a web server
    is its status line and headers: a login page that names its product in its title ('OpenEMR
    Login', 'Sectra UniView') is found through `http.title:` and not through '"OpenEMR"'. Every
    medical web page of the sample corpus whose title names a product the software or devices
    plan looks for is found by those plans, searched as the Shodan stand-in searches."""
    queries = [q for name in ["software", "devices"] for q in plan_load(name=name).queries]
    names = [m[1].lower() for q in queries if (m := re.fullmatch(r'"([^"]+)"', q.query))]
    terms = [parse_query(q.with_country("NL")) for q in queries]
    sample = ROOT / "fixtures" / "sample"
    labels = (json.loads(line) for line in (sample / "labels.jsonl").read_text().splitlines())
    with gzip.open(sample / "banners.jsonl.gz", "rt") as lines:
        pages = [
            banner
            for banner, label in zip(map(json.loads, lines), labels, strict=True)
            if label["class"] == "medical"
            and any(name in str((banner.get("http") or {}).get("title") or "").lower() for name in names)
        ]
    missed = sorted({b["http"]["title"] for b in pages if not any(matches(b, t) for t in terms)})
    assert len(pages) > 50
    assert missed == []


def test_medical_plan_is_the_union_of_the_others_without_repeats() -> None:
    medical = [q.query for q in plan_load(name="medical").queries]
    parts = [q.query for name in ["ports", "software", "devices", "hospitals"] for q in plan_load(name=name).queries]
    assert len(medical) == len(set(q.lower() for q in medical))
    assert set(medical) == set(parts)
    assert medical[0] == "port:104"  # the order of include: ports first


def test_a_query_gets_the_country_filter() -> None:
    query = plan_load(name="software").queries[0]
    assert query.with_country("NL") == f"{query.query} country:NL"
    assert country_filter(" nl ") == "NL"
    with pytest.raises(PlanError, match="two-letter"):
        country_filter("NLD")


def test_it_refuses_an_unknown_key(tmp_path: Path) -> None:
    path = _write(tmp_path, 'name = "custom"\n[[query]]\nquery = "port:104"\nlimt = 3\n')
    with pytest.raises(PlanError, match=r"custom.toml query #1: unknown key\(s\) limt"):
        plan_load(name=path)


def test_it_refuses_an_unknown_top_level_key(tmp_path: Path) -> None:
    with pytest.raises(PlanError, match=r"unknown key\(s\) queries"):
        plan_load(name=_write(tmp_path, '[[queries]]\nquery = "x"\n'))


@pytest.mark.parametrize("query", ["port:104 country:DE", '"x"country:DE', "-country:DE", 'Country:"DE"'])
def test_it_refuses_a_country_filter_in_a_query(tmp_path: Path, query: str) -> None:
    with pytest.raises(PlanError, match="has a country filter"):
        plan_load(name=_write(tmp_path, f"[[query]]\nquery = '{query}'\n"))


@pytest.mark.parametrize("query", ['http.title:"Select your country: NL"', "ssl.cert.subject.country:DE"])
def test_it_takes_country_inside_a_phrase_or_another_filter(tmp_path: Path, query: str) -> None:
    # Tokens as the credit rule reads them: a phrase is one token, and so is a filter's name.
    plan = plan_load(name=_write(tmp_path, f"[[query]]\nquery = '{query}'\n"))
    assert [q.with_country("NL") for q in plan.queries] == [f"{query} country:NL"]


def test_it_refuses_an_unbalanced_quote_and_empty_queries(tmp_path: Path) -> None:
    with pytest.raises(PlanError, match="unbalanced double quote"):
        plan_load(name=_write(tmp_path, "[[query]]\nquery = '\"Orthanc'\n"))
    with pytest.raises(PlanError, match="query is empty"):
        plan_load(name=_write(tmp_path, '[[query]]\nquery = "   "\n', name="empty"))


def test_it_refuses_a_plan_without_queries(tmp_path: Path) -> None:
    with pytest.raises(PlanError, match="nothing.toml: the plan has no queries"):
        plan_load(name=_write(tmp_path, 'name = "nothing"\ndescription = "to do"\n', name="nothing"))
    # An included plan may be empty; the plan that is run may not.
    plan_load(name=_write(tmp_path, f'include = ["{tmp_path / "nothing.toml"}", "ports"]\n'))


def test_it_refuses_an_unknown_registry(tmp_path: Path) -> None:
    with pytest.raises(PlanError, match="registry must be one of"):
        plan_load(name=_write(tmp_path, '[[generate]]\nregistry = "nl_pharmacies"\n'))


def test_it_refuses_plans_that_include_each_other(tmp_path: Path) -> None:
    first = tmp_path / "first.toml"
    second = tmp_path / "second.toml"
    first.write_text(f'include = ["{second}"]\n')
    second.write_text(f'include = ["{first}"]\n')
    with pytest.raises(PlanError, match="plans include each other"):
        plan_load(name=str(first))


def test_it_names_the_file_that_includes_an_unknown_plan(tmp_path: Path) -> None:
    with pytest.raises(PlanError, match="outer.toml include: there is no plan 'nosuch'"):
        plan_load(name=_write(tmp_path, 'include = ["ports", "nosuch"]\n', name="outer"))


def test_it_refuses_a_broken_file_and_names_it(tmp_path: Path) -> None:
    with pytest.raises(PlanError, match="broken.toml: cannot read the plan"):
        plan_load(name=_write(tmp_path, "[[query]\n", name="broken"))


def test_it_refuses_an_unknown_plan_name() -> None:
    with pytest.raises(PlanError, match="there is no plan 'nosuch'"):
        plan_load(name="nosuch")
    with pytest.raises(PlanError, match="invalid plan name"):
        plan_load(name="../etc/passwd")


def test_a_plan_file_can_include_a_shipped_plan(tmp_path: Path) -> None:
    plan = plan_load(name=_write(tmp_path, 'include = ["ports"]\n[[query]]\nquery = \'"Orthanc"\'\n'))
    assert plan.name == "custom"
    assert [q.query for q in plan.queries][-1] == '"Orthanc"'
    assert "port:104" in {q.query for q in plan.queries}


def test_a_long_query_without_a_label_loads_with_a_shortened_label(tmp_path: Path) -> None:
    # A query may have 400 characters; the label it gets when none is given must not refuse it.
    query = " ".join(f'"Afdeling Radiologie {n}"' for n in range(12))
    assert 100 < len(query) <= 400
    plan = plan_load(name=_write(tmp_path, f"[[query]]\nquery = '{query}'\n"))
    assert [q.query for q in plan.queries] == [query]
    assert plan.queries[0].label == query[:99] + "…"


@pytest.mark.parametrize(
    "entry",
    [
        'query = "port:104 \\u0000x"',
        'query = "\\u001b[2J\\"Orthanc\\""',
        'query = "port:104"\nlabel = "DICOM\\u0007"',
        'query = "port:104"\ncategory = "dicom\\u0000"',
    ],
)
def test_it_refuses_control_characters_in_a_query_its_label_or_category(tmp_path: Path, entry: str) -> None:
    # PostgreSQL stores no NUL in text, and an escape sequence would reach the terminal of whoever
    # reads the --count-only table or the run's summary.
    with pytest.raises(PlanError, match=r"odd.toml query #1: .*control character"):
        plan_load(name=_write(tmp_path, f"[[query]]\n{entry}\n", name="odd"))


def test_it_takes_unicode_text_in_queries(tmp_path: Path) -> None:
    plan = plan_load(name=_write(tmp_path, '[[query]]\nquery = \'org:"Zorggroep Ééén" "病院"\'\n'))
    assert plan.queries[0].with_country("NL") == 'org:"Zorggroep Ééén" "病院" country:NL'


def test_a_plan_file_includes_a_file_beside_it_wherever_it_is_run_from(tmp_path: Path, monkeypatch) -> None:
    # The weekly task runs in the worker's directory, not where the plan was written or checked.
    plans = tmp_path / "plans"
    plans.mkdir()
    (plans / "extra.toml").write_text("[[query]]\nquery = '\"Orthanc\"'\n")
    outer = plans / "weekly.toml"
    outer.write_text('include = ["extra.toml", "ports"]\n')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for cwd in (elsewhere, plans):
        monkeypatch.chdir(cwd)
        queries = [q.query for q in plan_load(name=str(outer)).queries]
        assert queries[0] == '"Orthanc"' and "port:104" in queries
