"""Pure classification of banners: rules as data files, protocol decoders, one engine.

from harvest.classify import Banner, banner_from_shodan, classify, load_rules
verdict = classify(banner_from_shodan(json.loads(service.raw)), load_rules())

(`Service.raw` is JSON text; banner_from_shodan takes the parsed object and reads a string as
a blank banner.)
"""

from harvest.classify.engine import classify
from harvest.classify.rules import RuleError, RuleSet, load_rules
from harvest.classify.types import Banner, Evidence, Verdict, banner_from_shodan

__all__ = ["Banner", "Evidence", "RuleError", "RuleSet", "Verdict", "banner_from_shodan", "classify", "load_rules"]
