"""The languages a probe set is written in and a scorer reads: what finetox knows of each scorer type's training
languages, and whether a scorer's languages cover a probe set's."""

from __future__ import annotations


#: the languages each Detoxify model was trained on, by `model_type`: its README says the `multilingual` model "has been
#: trained on 7 different languages so it should only be tested on: english, french, spanish, italian, portuguese,
#: turkish or russian"; `original` and `unbiased` were trained on English Jigsaw comments (Wikipedia, Civil Comments)
DETOXIFY_LANGUAGES = {
    "original": ("en",),
    "unbiased": ("en",),
    "multilingual": ("en", "fr", "es", "it", "pt", "tr", "ru"),
}


def trained_languages(kind: str, options: dict) -> tuple[str, ...] | None:
    """The languages a scorer of type `kind` with these options is known to read, or None where finetox cannot know
    them (a Hub classifier, a guard, a refusal scorer given phrases of its own): Detoxify's by model type,
    alt-profanity-check's English (trained on English text), and the built-in refusal phrases' English (a German
    "Es tut mir leid" opens with none of them, so a refusal rate on German text would read as none refused)."""
    if kind == "detoxify":
        return DETOXIFY_LANGUAGES[options.get("model_type") or "original"]
    if kind == "offline" or (kind == "refusal" and not options.get("phrases")):
        return ("en",)
    return None


def covers(languages: tuple[str, ...] | None, language: str) -> bool:
    """Whether a scorer restricted to `languages` (None: not restricted) may score text in `language`: the tag itself
    or its primary language (`de` covers `de-CH`; `zh` covers `zh-Hans`; case does not matter)."""
    if languages is None:
        return True
    tag = language.lower()
    return tag in languages or tag.split("-")[0] in languages


#: languages written without spaces between words: their repetition is counted in characters, not words
UNSPACED = ("zh", "ja", "th", "lo", "km", "my")


def text_unit(language: str) -> str:
    """What a text in `language` is cut into to count repeated n-grams: `word` (whitespace-separated) or, for a
    language written without spaces between words (UNSPACED), `character` (whitespace left out)."""
    return "character" if language.lower().split("-")[0] in UNSPACED else "word"
