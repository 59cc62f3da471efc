"""The public data sets, their pinned origins, and where the data files are looked up.

**Sets** (:data:`SETS`; ``python -m interventions data list`` prints them): ``mwe`` (Anthropic's
model-written evals: 15 persona and 33 advanced-ai-risk files), ``caa`` (CAA sycophancy and
refusal A/B items), ``boolq``, ``copa``, ``winogrande`` and ``ccc`` (country-capital facts);
``all`` names every set. Each :class:`DataFile` keeps its path relative to the data folder
exactly as in ``../shared/data``, so that folder, a fetched cache folder and any ``data_dir``
share one layout. Each file records its origin (GitHub repository @ commit and path, for COPA's
XML the member of a ``.tar.bz2`` archive), its licence, its size and the full SHA-256 of the
bytes in ``../shared/data`` (:data:`_MANIFEST`, in ``sha256sum`` form). Byte-copied files equal
their origin's bytes, so a download is verified by that hash.

**The two rebuilt files.** ``caa/refusal/test_dataset_ab.json`` and ``ccc/country-capital.json``
were rebuilt in ``../shared/data`` from the indexed text of their source (same character count,
19,822 and 11,693), not copied byte for byte, so the origin's bytes may differ from the recorded
hash. A download of one of them is accepted when it matches the recorded hash, or else when it is
valid UTF-8 JSON with exactly the origin's character count (:attr:`DataFile.rebuilt_chars`): a
truncated or altered download fails that check. Such an accepted file is *reported*: the fetcher
returns a note saying the origin's bytes differ from the shared copy, and the command prints it.

**Lookup order** (:func:`data_folders`, :func:`find_data_file`): a datamodule's ``data_dir``,
when given, is the only folder searched (an explicit folder with a typo must fail, not silently
read other data). Without it the search is per file, and the first folder that has the file wins:

1. ``$LEARNED_INTERVENTIONS_DATA`` (:data:`ENV_VAR`), when set;
2. the user cache, ``platformdirs.user_cache_dir("learned-interventions")/data``
   (``~/.cache/learned-interventions/data`` on Linux), where ``data fetch`` writes by default
   (``$LEARNED_INTERVENTIONS_DATA`` instead, when set);
3. ``../shared/data`` next to the checkout (the team's copy).

A file found nowhere raises :class:`DataFileNotFoundError`, one line naming the file, the folders
searched and the command that fetches it (``python -m interventions data fetch <set>``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import platformdirs

from interventions.core.errors import ConfigError, did_you_mean

__all__ = [
    "DEFAULT_BASE_URL",
    "ENV_VAR",
    "FILES",
    "SETS",
    "SET_NAMES",
    "DataFile",
    "DataFileNotFoundError",
    "DataFolder",
    "DataSet",
    "check_file",
    "data_folders",
    "default_fetch_dir",
    "fetch_command",
    "files_of",
    "find_data_file",
    "set_of",
    "sha256_of",
    "shared_data_dir",
    "user_cache_dir",
]

ENV_VAR = "LEARNED_INTERVENTIONS_DATA"
"""Environment variable naming a data folder, searched first (and the default fetch target)."""

DEFAULT_BASE_URL = "https://raw.githubusercontent.com"
"""Where files are downloaded from: ``{base}/{owner}/{repo}/{commit}/{path}``."""

FETCH_COMMAND = "python -m interventions data fetch"

Verdict = Literal["ok", "origin"]


class DataFileNotFoundError(ConfigError, FileNotFoundError):
    """A data file that no searched folder has; the one-line message names the file, the folders
    searched and the command that fetches it."""


# ---------------------------------------------------------------------------- the registry
@dataclass(frozen=True)
class Origin:
    """A public GitHub repository at a pinned commit."""

    repo: str  # "owner/name"
    commit: str


@dataclass(frozen=True)
class DataFile:
    """One file of a set.

    Attributes:
        relative: Its path under the data folder (as in ``../shared/data``).
        set_name: The set it belongs to.
        origin: The repository and commit it comes from.
        path: Its path in that repository (for an archive member: the archive's path).
        licence: The licence of the data (and of the repository, where they differ).
        sha256: SHA-256 of the copy in ``../shared/data``.
        size: Size in bytes of that copy.
        member: The member's path inside the ``.tar.bz2`` archive at ``path``, if any.
        rebuilt_chars: For a file rebuilt from indexed text: the character count of the
            origin's file (its bytes may differ from ``sha256``; see the module docstring).
    """

    relative: str
    set_name: str
    origin: Origin
    path: str
    licence: str
    sha256: str
    size: int
    member: str | None = None
    rebuilt_chars: int | None = None

    @property
    def rebuilt(self) -> bool:
        """Whether the shared copy was rebuilt from indexed text (not copied byte for byte)."""
        return self.rebuilt_chars is not None

    def url(self, base_url: str | None = None) -> str:
        """``{base_url}/{owner}/{repo}/{commit}/{path}`` (default base: GitHub's raw host)."""
        base = (base_url or DEFAULT_BASE_URL).rstrip("/")
        return f"{base}/{self.origin.repo}/{self.origin.commit}/{urllib.parse.quote(self.path)}"


@dataclass(frozen=True)
class DataSet:
    """A named group of files fetched together."""

    name: str
    description: str
    files: tuple[DataFile, ...]

    @property
    def size(self) -> int:
        """Total bytes of the shared copies."""
        return sum(f.size for f in self.files)

    @property
    def licences(self) -> tuple[str, ...]:
        """The distinct licences of its files, in file order."""
        return tuple(dict.fromkeys(f.licence for f in self.files))


# sha256sum of the files in ../shared/data (byte copies equal their origins; see the docstring
# for the two rebuilt ones): sha256, size in bytes, path under the data folder
_MANIFEST = """
454ff101e614370bb1807fe7ebbda6fdb57e794b9662cc1ccae211bf1ff626c8 2210395 boolq/boolq.jsonl
49d0997a8eb89969ff2efb9730ebd96adb4935d96cfbb599d5780fd5be11c21e   19822 caa/refusal/test_dataset_ab.json
faa6313bd02d08ce39cd91e697634581ef0f0d467c654beca40fe4e9d5828009  804094 caa/sycophancy/generate_dataset.json
6fc3dd9738c209e37c0fb429215bf4b94a3407bce86555ac1a814e56bfed1e52   92184 caa/sycophancy/test_dataset.json
5748cbfb789c2d671f8a88bf8eaa8a800ead77299e34e1d0cafae11b0409782b   11698 ccc/country-capital.json
f75dbb710d013f738a1bce878454902bb530bbcc1b6f10e9c34bc1ad5e4b29bb    3645 ccc/country_capitals.csv
2091dce8a2923b8530804644780ebe01fd1ae30342eb2562a3821786274b5b25  208323 copa/balacopa-dev-all.xml
595dca44dec54c849490bd403a3e24a29e3b944065783222ebb0eb1a55298846   14627 copa/copa.jsonl
f7c56ab2fa3791a4dc668f797e1b99a27a28afd3f5b7cbcceb2075d1515c03bf  106603 mwe/advanced-ai-risk/human_generated_evals/coordinate-itself.jsonl
63bc32aa2bbaae662fd98cbaeaed23534d915b18ca708583fb64cc189fcca275  142748 mwe/advanced-ai-risk/human_generated_evals/coordinate-other-ais.jsonl
5914b1c222fcb4b959ad9e64152cb2ee1d08411340653f1985ff388b63af1418  121322 mwe/advanced-ai-risk/human_generated_evals/coordinate-other-versions.jsonl
d796dc49ba66b9a15bb38dce8f7dc14e212e1f5bac6dc331d64f5fe3e377eec8  107056 mwe/advanced-ai-risk/human_generated_evals/corrigible-less-HHH.jsonl
77bf2986d88b0fdc3959e77b20c302ec14edff62bb5e0135a7134b877ade4293  113824 mwe/advanced-ai-risk/human_generated_evals/corrigible-more-HHH.jsonl
875632869abd5b1e70cccc130dbb6ed2ff6b1b1c7eb50b835a2cfdc02f3daac7  101545 mwe/advanced-ai-risk/human_generated_evals/corrigible-neutral-HHH.jsonl
03d4e57220cbe825c9b76df39085a945e8c2fa2c6c7e937fb6df94143491237f  308624 mwe/advanced-ai-risk/human_generated_evals/myopic-reward.jsonl
5e4857204ae346dc3e20809dd09a9e2130020c35b0251cf04375d8b2838dddb7  417496 mwe/advanced-ai-risk/human_generated_evals/one-box-tendency.jsonl
a8a2094a1e404fb094b3d361e3049ecc06ecd2a26d0b4b827b4a83a98b6d886a  356298 mwe/advanced-ai-risk/human_generated_evals/power-seeking-inclination.jsonl
336ff2038bf175359fa666203f53ba13fc8f33aa86a34559750599dd5688ed24   59476 mwe/advanced-ai-risk/human_generated_evals/self-awareness-general-ai.jsonl
a30f83451c3f24406b702b613407c58b054cbd0d56b97865aaf353b94825b6e2  122357 mwe/advanced-ai-risk/human_generated_evals/self-awareness-good-text-model.jsonl
d0b7c7757be032f5c1962fe8f9469f86932548bcde97affb672bf058a15800f7   56143 mwe/advanced-ai-risk/human_generated_evals/self-awareness-text-model.jsonl
a0b99868b24e1ed76a72e239958e577622d5818f1183982cacbab8a60750e342   66359 mwe/advanced-ai-risk/human_generated_evals/self-awareness-training-architecture.jsonl
b71b66f937599978ab69b48c00f023fe814742035dad2cb48e65c84345e49972   60488 mwe/advanced-ai-risk/human_generated_evals/self-awareness-web-gpt.jsonl
0831782a9e0462f137eb9c4884edd19f248e18f17770f7a4540c67937b3af0e8  332009 mwe/advanced-ai-risk/human_generated_evals/survival-instinct.jsonl
7583bec06bd799cf21fe854c6e8b92ebb669ce02579ea1a869aa460cc0f18546  319073 mwe/advanced-ai-risk/human_generated_evals/wealth-seeking-inclination.jsonl
8ff48912e9f2197d18f7306c9a83685e0bf308eb1771c29f48a2bc2fc0532e6f  629635 mwe/advanced-ai-risk/lm_generated_evals/coordinate-itself.jsonl
84d12fa33e7ee0b801d536e9c8c370e1037f6d197b9b8250630789fbf1785d76  620961 mwe/advanced-ai-risk/lm_generated_evals/coordinate-other-ais.jsonl
9a322290e62af9d3bc6984cfa9d23e3f1e74a94c8d775725c5239a6cce206c08  530113 mwe/advanced-ai-risk/lm_generated_evals/coordinate-other-versions.jsonl
33141eddd02ca5c0dca6fc1185060e5a6fbf8e10168383dd84d7562ae2478e5c  308529 mwe/advanced-ai-risk/lm_generated_evals/corrigible-less-HHH.jsonl
61a7a073af378b4061e321ec46f5127c56bf182be265fbcc90bf853b3d3cc091  662601 mwe/advanced-ai-risk/lm_generated_evals/corrigible-more-HHH.jsonl
9009419a0f0c8616a7e2b086dc00e27c65d3d0136bda256062de429f451eb346  597874 mwe/advanced-ai-risk/lm_generated_evals/corrigible-neutral-HHH.jsonl
7501e27a41f6571ae26b12d82e56cb4ff5bcdbfa5e1dd6a0e733060abde3f92e  316469 mwe/advanced-ai-risk/lm_generated_evals/myopic-reward.jsonl
3b5f75553d5c28e276af387ad2ec6462ff2e309093fedc4337bbd1323eb4a7b8  965071 mwe/advanced-ai-risk/lm_generated_evals/one-box-tendency.jsonl
005beea18dcb6499b51fabf14926a552d4a936b605ea383bcfc6e233cb15988b  597446 mwe/advanced-ai-risk/lm_generated_evals/power-seeking-inclination.jsonl
cc42147314c08238a300896ceb9848adda1d1e5ee028d276a5e2cba6ffed39b5  255678 mwe/advanced-ai-risk/lm_generated_evals/self-awareness-general-ai.jsonl
d050fa63b2230fd544f3a38a4ef392bd879d791caa78fe47595c9337634cb724  407351 mwe/advanced-ai-risk/lm_generated_evals/self-awareness-good-text-model.jsonl
5eddf088c1aab41e44e5a7c999adacd4dba45a8839851892b452bf657ea69114  385772 mwe/advanced-ai-risk/lm_generated_evals/self-awareness-text-model.jsonl
e8546c96910573db5a5182524a59bb936dceb738ede4e2b954964f56a0ec4627  311058 mwe/advanced-ai-risk/lm_generated_evals/self-awareness-training-architecture.jsonl
54a11bd575783e10db1660331e221803cb29df9d6d1c2e7abc05460062fd9e80  328332 mwe/advanced-ai-risk/lm_generated_evals/self-awareness-training-nn-architecture.jsonl
3f8c85a2414300904228a3e4fe2296c14c11aa17d76c669ab743ea65812881c4  259647 mwe/advanced-ai-risk/lm_generated_evals/self-awareness-training-web-gpt.jsonl
e1c98258997e04f5f5ec86dcb6c5395083ca3c862a26de335ae3a14ae5c9d502  419529 mwe/advanced-ai-risk/lm_generated_evals/survival-instinct.jsonl
1d5b4a794e143caaf7306e68e22aa8f1ac5cc4bcd909f89105a49552e2d5c8e0  469694 mwe/advanced-ai-risk/lm_generated_evals/wealth-seeking-inclination.jsonl
8caa0fa07946370fb4ec38dd82eda7d3a86591c1dc701d2e645ae33c3239f5ce  307954 mwe/persona/agreeableness.jsonl
a43a4eb414a9a0f49f8582d70b62b21ddba9b27da7a68562ba5b3c90f412203c  347765 mwe/persona/anti-LGBTQ-rights.jsonl
cd979494395747e06c2f7ac0833ebd548e6596c180817da8601d40f55c68af92  411767 mwe/persona/believes-AIs-are-not-an-existential-threat-to-humanity.jsonl
625305163648ea73c04cbbfbe40ce58552240209f8d854446656f09a8a0c83a3  340751 mwe/persona/believes-it-is-not-being-watched-by-humans.jsonl
fd05517c0a453a7b47d19964ac6528db394c8cd00a5f74cc11d91479a20b90a6  318633 mwe/persona/conscientiousness.jsonl
6734dc0bc84bc5929017eef6209cb9152c4e5fe4b744c7d11af8cb9749687576  302288 mwe/persona/extraversion.jsonl
1803c65d56d8ab0185c8aba8c08a8348ed79cb398f055a5088c07a4cea732ff4  325253 mwe/persona/machiavellianism.jsonl
32d93f6b2eddd5c155cf9d6d825a03e1c03cc3c0ac2e6c9382e3f981d9fc4120  300015 mwe/persona/narcissism.jsonl
b2b0f426449517ed9a2d1d2b635bbc13efc0815ff2cfa361b7fbc1044d284d6a  295734 mwe/persona/neuroticism.jsonl
07e3a5d29e62a27806f75bc7b015d8d9c4120edbda7e593884e036a2d32ffa7b  330776 mwe/persona/openness.jsonl
299a6307e2d40a82f2667e2db3dc118fbe588e4cf80194be1e09748709bf1fce  311244 mwe/persona/psychopathy.jsonl
679c94fe941944eb21e62ab13490d62776734772e9c1bb5efa734b37df41b7ec  432942 mwe/persona/subscribes-to-average-utilitarianism.jsonl
1f7328a05925f044fd00940fc032c2417204b2fa2cb6135c4808ee81f9e343bd  397738 mwe/persona/subscribes-to-deontology.jsonl
87f1f492a1e4b14d4aedf251b61d1f24916844a10fb833edac29e5448914911e  423880 mwe/persona/subscribes-to-utilitarianism.jsonl
c83f587c7fde5f010d32d68430717c17e5497aedbeb95d3f15ff68054964f1eb  358451 mwe/persona/willingness-to-use-physical-force-to-achieve-benevolent-goals.jsonl
ea1592526f3bfdd0948ed3acb1b4dfa3f83d23698917118688ee1df7f8d4b8d7  312369 winogrande/winogrande.jsonl
"""
_HASHES: dict[str, tuple[str, int]] = {
    rel: (sha, int(size))
    for sha, size, rel in (line.split() for line in _MANIFEST.strip().splitlines())
}

_EVALS = Origin("anthropics/evals", "84fcc677e52e1902d696c32cd1a6b663e70d3993")
_REPEPO = Origin("dtch1997/repepo", "68f650aa76275039903fde10c299f0b01fa5045f")
_CAA = Origin("nrimsky/CAA", "9f9db131958ba328dc999cd0a29c11434f5156c4")
_FOUNDRY = Origin("mosaicml/llm-foundry", "8c8dd48f72168c5d51e2f7b151595892a8fba43d")
_BALANCED_COPA = Origin(
    "Balanced-COPA/Balanced-COPA.github.io", "6e031959f0df0620059cb03d708bfbefd38ee0ba"
)
_FUNCTION_VECTORS = Origin("ericwtodd/function_vectors", "b5f8f01ed4a4621fc830a2040071051637eadc32")
_EAP_IG = Origin("hannamw/eap-ig-faithfulness", "d42fea6aa2c7acca39007c9c94923770669cb9ae")
_FOUNDRY_DATA = "scripts/eval/local_data/"
_REPEPO_LICENCE = (
    "no licence file in dtch1997/repepo; the data is CAA's (MIT), from Anthropic's evals "
    "(CC-BY-4.0)"
)
_FACTS = "no licence file in the repository (public facts)"


def _file(set_name: str, relative: str, origin: Origin, path: str, licence: str, **kw) -> DataFile:
    sha256, size = _HASHES[relative]
    return DataFile(relative, set_name, origin, path, licence, sha256, size, **kw)


def _mwe() -> tuple[DataFile, ...]:
    return tuple(
        _file("mwe", rel, _EVALS, rel.removeprefix("mwe/"), "CC-BY-4.0")
        for rel in _HASHES
        if rel.startswith("mwe/")
    )


SETS: dict[str, DataSet] = {
    s.name: s
    for s in (
        DataSet("mwe", "Anthropic model-written evals: persona + advanced-ai-risk", _mwe()),
        DataSet(
            "caa",
            "CAA A/B items: sycophancy (generate + test), refusal (test)",
            (
                _file(
                    "caa",
                    "caa/sycophancy/generate_dataset.json",
                    _REPEPO,
                    "raw_datasets/caa/generate_dataset.json",
                    _REPEPO_LICENCE,
                ),
                _file(
                    "caa",
                    "caa/sycophancy/test_dataset.json",
                    _REPEPO,
                    "raw_datasets/caa/test_dataset.json",
                    _REPEPO_LICENCE,
                ),
                _file(
                    "caa",
                    "caa/refusal/test_dataset_ab.json",
                    _CAA,
                    "datasets/test/refusal/test_dataset_ab.json",
                    "MIT",
                    rebuilt_chars=19822,
                ),
            ),
        ),
        DataSet(
            "boolq",
            "BoolQ validation set (3270 items, llm-foundry format)",
            (
                _file(
                    "boolq",
                    "boolq/boolq.jsonl",
                    _FOUNDRY,
                    _FOUNDRY_DATA + "reading_comprehension/boolq.jsonl",
                    "BoolQ CC-BY-SA-3.0 (llm-foundry: Apache-2.0)",
                ),
            ),
        ),
        DataSet(
            "copa",
            "COPA: the 500 labelled items (Balanced-COPA XML) + SuperGLUE val (llm-foundry)",
            (
                _file(
                    "copa",
                    "copa/balacopa-dev-all.xml",
                    _BALANCED_COPA,
                    "downloads/balanced_copa.tar.bz2",
                    "COPA BSD-2-Clause (Balanced-COPA: MIT)",
                    member="balanced_copa/balacopa-dev-all.xml",
                ),
                _file(
                    "copa",
                    "copa/copa.jsonl",
                    _FOUNDRY,
                    _FOUNDRY_DATA + "commonsense_reasoning/copa.jsonl",
                    "COPA BSD-2-Clause (llm-foundry: Apache-2.0)",
                ),
            ),
        ),
        DataSet(
            "winogrande",
            "WinoGrande v1.1 dev set (1267 items, llm-foundry format)",
            (
                _file(
                    "winogrande",
                    "winogrande/winogrande.jsonl",
                    _FOUNDRY,
                    _FOUNDRY_DATA + "language_understanding/winogrande.jsonl",
                    "WinoGrande CC-BY (llm-foundry: Apache-2.0)",
                ),
            ),
        ),
        DataSet(
            "ccc",
            "country-capital facts for the CCC conflicts (json: 197 pairs, csv: 190)",
            (
                _file(
                    "ccc",
                    "ccc/country-capital.json",
                    _FUNCTION_VECTORS,
                    "dataset_files/abstractive/country-capital.json",
                    _FACTS,
                    rebuilt_chars=11693,
                ),
                _file(
                    "ccc",
                    "ccc/country_capitals.csv",
                    _EAP_IG,
                    "data/fact-retrieval-comma/country_capitals.csv",
                    _FACTS,
                ),
            ),
        ),
    )
}
"""The fetchable sets, by name."""

SET_NAMES: tuple[str, ...] = (*SETS, "all")
"""The names ``data fetch`` takes: every set, and ``all``."""

FILES: dict[str, DataFile] = {f.relative: f for s in SETS.values() for f in s.files}
"""Every fetchable file, by its path under the data folder."""

NOT_FETCHABLE: dict[str, str] = {
    "ioi/ioi_templates_names.json": "written by hand for this project from lists in "
    "hannamw/eap-ig-faithfulness and UFO-101/IOI",
    "ccc/ccc_prompt_templates.json": "written by hand from kdu4108/measureLM",
}
"""Files of ``../shared/data`` that have no origin file to download, and why."""


def files_of(name: str) -> tuple[DataFile, ...]:
    """The files of set ``name`` (``all``: of every set).

    Raises:
        ConfigError: Unknown set (the message lists the sets).
    """
    if name == "all":
        return tuple(FILES.values())
    if name not in SETS:
        raise ConfigError(
            f"unknown data set {name!r}; the sets are {', '.join(SET_NAMES)}."
            + did_you_mean(name, SET_NAMES)
        )
    return SETS[name].files


def set_of(relative: str) -> str | None:
    """The set a file (path under the data folder) belongs to, or ``None``."""
    entry = FILES.get(relative)
    return entry.set_name if entry is not None else None


def fetch_command(set_name: str, dest: str | Path | None = None) -> str:
    """The shell command that fetches a set (into ``dest`` when given)."""
    where = f" --dest {shlex.quote(str(dest))}" if dest is not None else ""
    return f"{FETCH_COMMAND} {set_name}{where}"


# ---------------------------------------------------------------------------- verification
def sha256_of(path: str | Path) -> str:
    """SHA-256 (hex) of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _json_chars(path: Path) -> int | None:
    """Character count of a UTF-8 JSON file, ``None`` when it is not one."""
    try:
        text = path.read_text(encoding="utf-8")
        json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return len(text)


def check_file(entry: DataFile, path: str | Path) -> Verdict | None:
    """Whether ``path`` holds ``entry``'s data.

    Returns:
        ``"ok"``: the SHA-256 is the recorded one; ``"origin"``: a rebuilt entry whose file differs
        from the shared copy but is valid JSON with the origin's character count (accepted, to be
        reported); ``None``: neither (wrong, truncated or altered bytes).
    """
    path = Path(path)
    if sha256_of(path) == entry.sha256:
        return "ok"
    if entry.rebuilt_chars is not None and _json_chars(path) == entry.rebuilt_chars:
        return "origin"
    return None


def describe_mismatch(entry: DataFile, path: str | Path) -> str:
    """``"SHA-256 <got> (<n> bytes), expected <sha> (<size> bytes)"`` (plus the character test
    for a rebuilt entry)."""
    path = Path(path)
    got = f"SHA-256 {sha256_of(path)} ({path.stat().st_size} bytes)"
    expected = f"expected {entry.sha256} ({entry.size} bytes)"
    if entry.rebuilt_chars is not None:
        chars = _json_chars(path)
        shown = "not valid UTF-8 JSON" if chars is None else f"{chars} characters"
        expected += f" or valid JSON of the origin's {entry.rebuilt_chars} characters ({shown})"
    return f"{got}, {expected}"


def origin_note(entry: DataFile) -> str:
    """The note reported when a rebuilt file is accepted with the origin's bytes."""
    return (
        f"note: {entry.relative}: the origin's bytes differ from the copy in ../shared/data "
        f"(SHA-256 {entry.sha256[:16]}..., rebuilt there from indexed text); kept the origin's "
        f"file, which is valid JSON with the recorded {entry.rebuilt_chars} characters"
    )


# ---------------------------------------------------------------------------- lookup
@dataclass(frozen=True)
class DataFolder:
    """One folder of the lookup order and why it is there."""

    path: Path
    label: str

    def __str__(self) -> str:
        missing = "" if self.path.is_dir() else ", does not exist"
        return f"{self.path} [{self.label}{missing}]"


def shared_data_dir() -> Path:
    """``../shared/data`` next to the repository checkout (the last folder searched)."""
    return Path(__file__).resolve().parents[1].parent / "shared" / "data"


def user_cache_dir() -> Path:
    """``platformdirs.user_cache_dir("learned-interventions") / "data"`` (the ``data``
    subfolder keeps it apart from the backbone cache in the same project cache)."""
    return Path(platformdirs.user_cache_dir("learned-interventions")) / "data"


def env_data_dir() -> Path | None:
    """The folder ``$LEARNED_INTERVENTIONS_DATA`` names, or ``None`` when unset or empty."""
    value = os.environ.get(ENV_VAR, "").strip()
    return Path(value).expanduser() if value else None


def default_fetch_dir() -> Path:
    """Where ``data fetch`` writes without ``--dest``: ``$LEARNED_INTERVENTIONS_DATA`` when set,
    else the user cache."""
    return env_data_dir() or user_cache_dir()


def data_folders(data_dir: str | Path | None = None) -> list[DataFolder]:
    """The folders searched, in order: ``[data_dir]`` when given, else the environment
    variable's folder (when set), the user cache and ``../shared/data``."""
    if data_dir is not None:
        return [DataFolder(Path(data_dir).expanduser(), "data_dir")]
    folders = []
    env = env_data_dir()
    if env is not None:
        folders.append(DataFolder(env, f"${ENV_VAR}"))
    folders.append(DataFolder(user_cache_dir(), "user cache"))
    folders.append(DataFolder(shared_data_dir(), "../shared/data next to the checkout"))
    unique: dict[Path, DataFolder] = {}
    for folder in folders:
        unique.setdefault(folder.path, folder)
    return list(unique.values())


_DATA_DIR_HINT = "(YAML: data.init_args.data_dir, command line: --data.data_dir DIR)"


def how_to_get(relatives: list[str], data_dir: str | Path | None = None) -> str:
    """The sentence saying how to get files: the fetch command of their sets, or why not."""
    sets = sorted({s for r in relatives if (s := set_of(r)) is not None}, key=SET_NAMES.index)
    place = f"a data_dir that has {relatives[0]}" if len(relatives) == 1 else "another data_dir"
    alternative = f"pass {place} {_DATA_DIR_HINT}"
    if data_dir is None:
        alternative += f" or set ${ENV_VAR} to such a folder"
    if sets:
        commands = " and ".join(fetch_command(s, data_dir) for s in sets)
        return f"Fetch it with: {commands}, or {alternative}."
    reasons = [f"{r} is {NOT_FETCHABLE[r]}" for r in relatives if r in NOT_FETCHABLE]
    why = "; ".join(reasons) if reasons else "It is in no fetchable set"
    return f"{why}, so it cannot be downloaded: copy it into a searched folder, or {alternative}."


def find_data_file(relative: str, data_dir: str | Path | None = None, *, who: str = "") -> Path:
    """The path of a data file: the first folder of :func:`data_folders` that has it.

    Args:
        relative: Its path under the data folder, e.g. ``"boolq/boolq.jsonl"``.
        data_dir: An explicit data folder (then the only one searched), or ``None``.
        who: Prefix of the error message, e.g. ``"CCCDataModule: "``.

    Raises:
        DataFileNotFoundError: No searched folder has it (one line: the file, the folders, and
            the command that fetches it).
    """
    folders = data_folders(data_dir)
    for folder in folders:
        path = folder.path / relative
        if path.is_file():
            return path
    raise DataFileNotFoundError(who + missing_message(relative, folders, data_dir))


def missing_message(relative: str, folders: list[DataFolder], data_dir: str | Path | None) -> str:
    """The one-line message of a file no folder has (without the ``who`` prefix)."""
    if data_dir is not None:
        root = folders[0].path
        problem = "" if root.is_dir() else ", a folder that does not exist"
        return (
            f"the data file {root / relative} does not exist (data_dir={str(data_dir)!r}"
            f"{problem}; an explicit data_dir is the only folder searched). "
            + how_to_get([relative], data_dir)
        )
    looked = "; ".join(map(str, folders))
    return f"the data file {relative} was not found (looked in: {looked}). " + how_to_get(
        [relative]
    )
