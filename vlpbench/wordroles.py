"""Which vocabulary entries are content words (nouns, verbs, adjectives, numerals): the words ViLTA
replaces to synthesise hard negatives (Sec. 3.3).

Modes: ``embedded`` uses the embedded generator's lexicon (``captions.CONTENT_WORDS``), which is
exact on that data. ``pos`` uses NLTK's part-of-speech tagger when it and its model are installed
(``pip install vlpbench[pos]`` plus the ``averaged_perceptron_tagger_eng`` data), tagging each
vocabulary word on its own; otherwise a fallback: a whole alphabetic word of two or more letters
that is not in a short English stop-word list. Sub-word pieces (``##..``) and special tokens are
never content words.
"""

from __future__ import annotations

import torch

from vlpbench.data.captions import CONTENT_WORDS
from vlpbench.zoo.tokenizer import TextTokenizer

STOP_WORDS = frozenset("""
a an the this that these those there here is are was were be been being am do does did has have had
of on in at to with and or but for by from as into onto over under than then it its it's we you they
he she i me my our your their them his her what which who whom whose can could will would should may
might must not no nor so too very just only also some any each every all both few more most other
such own same s t don now shows show see seen contains contain picture image photo scene
""".split())
POS_PREFIXES = ("NN", "VB", "JJ", "CD")


def _nltk_tagger():
    """``nltk.pos_tag`` if NLTK and its tagger model are installed, else None."""
    try:
        import nltk
        nltk.pos_tag(["test"])
        return nltk.pos_tag
    except (ImportError, LookupError):
        return None


def content_token_mask(tokenizer: TextTokenizer, mode: str) -> torch.Tensor:
    """[vocab_size] bool: True where the token is a whole content word."""
    tokens = tokenizer.hf.convert_ids_to_tokens(list(range(tokenizer.vocab_size)))
    special = set(tokenizer.hf.all_special_tokens)
    words = [t if t not in special and not t.startswith("##") and t.isalpha() else None for t in tokens]
    if mode == "embedded":
        flags = [w in CONTENT_WORDS for w in words]
    else:
        tagger = _nltk_tagger()
        if tagger is not None:
            candidates = [w for w in words if w]
            tags = dict(zip(candidates, (tag for _, tag in tagger(candidates))))
            flags = [bool(w) and tags[w].startswith(POS_PREFIXES) for w in words]
        else:
            flags = [bool(w) and len(w) > 1 and w.lower() not in STOP_WORDS for w in words]
    return torch.tensor(flags, dtype=torch.bool)
