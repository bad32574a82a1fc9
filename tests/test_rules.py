import pytest

from selfgen.filters.rules import BLACKLIST_ZH, RuleConfig, RuleFilter, count_words


@pytest.mark.parametrize(
    "text,reason",
    [
        ("Explain how a rainbow forms.", None),
        ("Say hi now", "too_short"),
        ("word " * 151, "too_long"),
        ("Describe the picture of a sunset.", "blacklist:picture"),
        ("Plot the sales for each month.", "blacklist:plot"),
        ("Tell me how to go to the station.", "blacklist:go to"),
        ("Explain the mapping of keys to values.", None),  # whole words only
        ("Write a program that sorts numbers.", "banned_prefix:Write a program"),
        ('"Quote this sentence back to me."', "leading_punctuation"),
        ("Éxplique la fotosíntesis en detalle.", "language:not_ascii_start"),
    ],
)
def test_paper_rules(text, reason):
    assert RuleFilter(RuleConfig()).check(text) == reason


def test_rules_are_data():
    rules = RuleFilter(
        RuleConfig(min_words=2, blacklist=["banana"], banned_prefixes=[], language_check="none")
    )
    assert rules.check("Write a program now") is None
    assert rules.check("Peel a banana") == "blacklist:banana"
    assert rules.check("Éxplique la fotosíntesis") is None


def test_chinese_rules():
    rules = RuleFilter(RuleConfig(blacklist=BLACKLIST_ZH, language_check="cjk"))
    assert count_words("写一首关于春天的诗") == 9
    assert rules.check("写一首关于春天的诗") is None
    assert rules.check("请画一只可爱的猫") == "blacklist:画"
    assert rules.check("Explain how planes fly") == "language:no_cjk"
    assert rules.check("，写一首关于春天的诗") == "leading_punctuation"
