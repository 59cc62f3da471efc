"""Rows of a user's data file, for the file-backed data modules of :mod:`datamodules.files`.

A *source* is one of:

* a ``.jsonl`` file: one JSON object per line (blank lines are skipped);
* a ``.json`` file: a list of objects, or an object ``{"data": [...]}``;
* a ``.csv`` file: a header line, then one row per line (:mod:`csv`, so quoted cells may hold
  commas and newlines); every value is a string, and a list value (multiple-choice ``choices``)
  is a JSON list in its cell, e.g. ``"[""Paris"", ""Rome""]"``;
* a ``.parquet`` file (needs ``pyarrow``);
* anything else: a Hugging Face dataset, a saved folder (``Dataset.save_to_disk``) or a hub
  name / folder of data files for ``datasets.load_dataset`` (needs ``datasets``).

Rows are numbered from 1 in file order; a jsonl or csv row also names its line in the file, so a
problem reads ``my.csv: row 2 (line 3): the column 'correct' is empty``.  Every problem is a
one-line :class:`~interventions.core.errors.ConfigError` naming the source, the row and what is
wrong.

A data module reads its fields through a :class:`Columns` table: field name -> the file's column
(identity unless the ``columns`` option renames it, e.g. ``{"prompt": "question"}``).
"""

from __future__ import annotations

import csv
import inspect
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from interventions.core.errors import ConfigError, did_you_mean

__all__ = ["SUFFIXES", "Columns", "Record", "inherited_hparams", "read_records", "source_name"]

SUFFIXES: tuple[str, ...] = (".jsonl", ".json", ".csv", ".parquet")
"""The file suffixes read without the ``datasets`` library."""

_SAVED_DATASET_FILES = ("dataset_info.json", "dataset_dict.json", "state.json")


@dataclass(frozen=True)
class Record:
    """One row of a source.

    Attributes:
        where: The row for messages: ``"row 3"``, or ``"row 3 (line 4)"`` in a jsonl / csv file.
        values: The row's columns and values, as read.
    """

    where: str
    values: dict[str, Any]


# ---------------------------------------------------------------------------- readers
def _read_jsonl(path: Path) -> list[Record]:
    records = []
    with open(path, encoding="utf-8") as f:
        for line_number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"row {len(records) + 1} (line {line_number})"
            try:
                value = json.loads(line)
            except json.JSONDecodeError as err:
                raise ConfigError(
                    f"{path}: {where}: not valid JSON ({err.msg} at column {err.colno}); a "
                    ".jsonl file holds one JSON object per line."
                ) from err
            records.append(_object(path, where, value))
    return records


def _read_json(path: Path) -> list[Record]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ConfigError(
            f"{path}: not valid JSON ({err.msg} at line {err.lineno}, column {err.colno})."
        ) from err
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise ConfigError(
            f'{path}: expected a JSON list of objects or an object {{"data": [...]}}, got '
            f"{type(data).__name__}{_keys(data)}."
        )
    return [_object(path, f"row {i}", value) for i, value in enumerate(data, start=1)]


def _keys(data: Any) -> str:
    return f" with keys {sorted(data)}" if isinstance(data, dict) else ""


def _read_csv(path: Path) -> list[Record]:
    records = []
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames:
            raise ConfigError(f"{path}: the CSV file has no header line (the column names).")
        line = reader.line_num + 1  # the first line of the next row
        for values in reader:
            where = f"row {len(records) + 1} (line {line})"
            line = reader.line_num + 1
            if None in values:  # more cells than header columns
                raise ConfigError(
                    f"{path}: {where}: has {len(reader.fieldnames) + len(values[None])} cells "
                    f"but the header has {len(reader.fieldnames)} columns; quote cells that "
                    'contain commas ("a, b").'
                )
            records.append(Record(where, dict(values)))
    return records


def _read_parquet(path: Path) -> list[Record]:
    try:
        import pyarrow.parquet as pq
    except ImportError as err:
        raise ConfigError(
            f"{path}: reading a .parquet file needs pyarrow, which is not installed: "
            "pip install pyarrow (it comes with the project's [files] extra, which `make install` "
            "installs), or save the data as .jsonl / .csv."
        ) from err
    rows = pq.read_table(path).to_pylist()
    return [Record(f"row {i}", dict(row)) for i, row in enumerate(rows, start=1)]


def _read_dataset(name: str, split: str, subset: str | None) -> tuple[str, list[Record]]:
    label = f"dataset {name!r} (split {split!r})"
    try:
        import datasets
    except ImportError as err:
        raise ConfigError(
            f"{name!r} is not a file ending in {', '.join(SUFFIXES)}; reading a Hugging Face "
            "dataset (a hub name or a saved folder) needs the datasets library, which is not "
            "installed: pip install datasets (the project's [files] extra has it). Or pass a path to a .jsonl / .json / .csv file."
        ) from err
    folder = Path(name)
    try:
        if folder.is_dir() and any((folder / f).is_file() for f in _SAVED_DATASET_FILES):
            data = datasets.load_from_disk(str(folder))
            if isinstance(data, datasets.DatasetDict):
                if split not in data:
                    raise ConfigError(
                        f"{label}: the saved dataset has no split {split!r}; its splits are "
                        f"{sorted(data)}. Pass split=<one of them>."
                    )
                data = data[split]
        else:
            data = datasets.load_dataset(name, subset, split=split)
    except ConfigError:
        raise
    except Exception as err:  # the library's own errors: not found, offline, bad split, ...
        raise ConfigError(f"{label}: could not be loaded ({type(err).__name__}: {err}).") from err
    return label, [Record(f"row {i}", dict(row)) for i, row in enumerate(data, start=1)]


def _object(path: Path, where: str, value: Any) -> Record:
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: {where}: expected a JSON object, got {type(value).__name__}.")
    return Record(where, value)


_READERS = {".jsonl": _read_jsonl, ".json": _read_json, ".csv": _read_csv}


def read_records(
    path: str | Path, split: str = "train", subset: str | None = None
) -> tuple[str, list[Record]]:
    """Every row of a file or dataset, in order (see the module docstring for the formats).

    Args:
        path: A ``.jsonl`` / ``.json`` / ``.csv`` / ``.parquet`` file, or a Hugging Face dataset
            (a saved folder, or a hub name / folder for ``datasets.load_dataset``).
        split: The split of a Hugging Face dataset (ignored for files).
        subset: The configuration name of a Hugging Face dataset (ignored for files).

    Returns:
        ``(source, records)``: the source as messages name it (the file's path, or
        ``dataset '<name>' (split '<split>')``) and its rows.

    Raises:
        ConfigError: A missing file, a malformed file, a file with no rows, or a dataset that
            cannot be read here (``datasets`` not installed, not found, offline).
    """
    file = Path(path)
    suffix = file.suffix.lower()
    if suffix in SUFFIXES:
        if not file.is_file():
            where = "is a folder" if file.is_dir() else "does not exist"
            raise ConfigError(
                f"{file}: the data file {where} (resolved against the current folder "
                f"{Path.cwd()}). Pass the path of a {suffix} file (data.init_args.path)."
            )
        source = str(file)
        records = _read_parquet(file) if suffix == ".parquet" else _READERS[suffix](file)
    elif file.is_file():
        raise ConfigError(
            f"{file}: unknown data file type {file.suffix or '(no suffix)'!r}; expected a file "
            f"ending in {', '.join(SUFFIXES)}, or a Hugging Face dataset name / saved folder."
        )
    else:
        source, records = _read_dataset(str(path), split, subset)
    if not records:
        raise ConfigError(f"{source}: has no rows; the data needs at least one.")
    return source, records


# ---------------------------------------------------------------------------- columns
class Columns:
    """The file's column of each field a data module reads, and checked access to the values.

    Args:
        source: The source as messages name it (see :func:`read_records`).
        fields: ``{field: what it is}`` of every field the data module knows (for messages).
        columns: The ``columns`` option: ``{field: column}`` for the fields whose column has
            another name; a multiple-choice ``choices`` may name a list of columns (one choice
            each).
        owner: The data module's name, for messages.
    """

    def __init__(
        self,
        source: str,
        fields: Mapping[str, str],
        columns: Mapping[str, str | Sequence[str]] | None,
        owner: str,
    ) -> None:
        self.source = source
        self.fields = dict(fields)
        self.owner = owner
        columns = dict(columns or {})
        for field, column in columns.items():
            if field not in self.fields:
                example = f"{{{next(iter(self.fields))}: my_column}}"
                raise ConfigError(
                    f"{owner}: columns names an unknown field {field!r}; the fields are "
                    f"{', '.join(self.fields)} (columns maps a field to the file's column, e.g. "
                    f"{example}).{did_you_mean(field, self.fields)}"
                )
            ok = isinstance(column, str) or (
                field == "choices"
                and isinstance(column, Sequence)
                and len(column) > 0
                and all(isinstance(c, str) for c in column)
            )
            if not ok:
                kind = (
                    "a column name or a list of column names"
                    if field == "choices"
                    else "a column name"
                )
                raise ConfigError(f"{owner}: columns[{field!r}] must be {kind}, got {column!r}.")
        self.columns: dict[str, str | list[str]] = {
            f: (c if isinstance(c, str) else list(c)) for f, c in columns.items()
        }

    def column(self, field: str) -> str | list[str]:
        """The file's column (or columns) of ``field``."""
        return self.columns.get(field, field)

    def error(self, record: Record, problem: str) -> ConfigError:
        """A one-line error naming the source, the row and the problem."""
        return ConfigError(f"{self.source}: {record.where}: {problem}")

    def format(self, record: Record, template: str, option: str, **values: Any) -> str:
        """``template.format(**values)``; a one-line error for a template that does not fit
        (``option`` names the template's option in the message)."""
        try:
            return template.format(**values)
        except (KeyError, IndexError, ValueError) as err:
            raise self.error(
                record,
                f"{option}={template!r} cannot be filled ({type(err).__name__}: {err}); it may "
                f"name {sorted(values)} (write a literal brace as {{{{ or }}}}).",
            ) from err

    def has(self, record: Record, field: str) -> bool:
        """Whether the row has the column(s) of ``field``."""
        column = self.column(field)
        names = [column] if isinstance(column, str) else column
        return all(name in record.values for name in names)

    def _describe(self, field: str, column: str | None = None) -> str:
        """``"the column 'answer' (field 'correct': the correct answer)"``."""
        column = column if column is not None else self.column(field)  # type: ignore[assignment]
        return f"the column {column!r} (field {field!r}: {self.fields[field]})"

    def value(self, record: Record, field: str) -> Any:
        """The raw value of ``field`` (a list for a list of columns); a clear error when a
        column is missing."""
        column = self.column(field)
        if not isinstance(column, str):
            return [self._single(record, field, c) for c in column]
        return self._single(record, field, column)

    def _single(self, record: Record, field: str, column: str) -> Any:
        if column not in record.values:
            raise self.error(
                record,
                f"missing {self._describe(field, column)}; the row has the columns "
                f"{sorted(record.values)}.{did_you_mean(column, record.values)} Rename "
                f"with columns: {{{field}: <column>}} (data.init_args.columns).",
            )
        return record.values[column]

    def text(self, record: Record, field: str) -> str:
        """The value of ``field``: a string that is not empty (nor only whitespace)."""
        value = self.value(record, field)
        if value is None or (isinstance(value, str) and not value.strip()):
            raise self.error(record, f"{self._describe(field)} is empty.")
        if not isinstance(value, str):
            raise self.error(
                record,
                f"{self._describe(field)} must be a string, got {type(value).__name__} {value!r}.",
            )
        return value

    def optional_text(self, record: Record, field: str) -> str | None:
        """:meth:`text`, or ``None`` when the column is missing or the value empty."""
        value = record.values.get(self.column(field))  # type: ignore[arg-type]
        if value is None or (isinstance(value, str) and not value.strip()):
            return None
        return self.text(record, field)


def inherited_hparams(module: Any) -> list[str]:
    """The hyperparameters a base class saved that are not in the signature of ``module``'s
    class, for ``save_hyperparameters(ignore=...)``: a file data module's hyperparameters are its
    own signature, not its base class's."""
    own = inspect.signature(type(module).__init__).parameters
    return [name for name in module.hparams if name not in own]


def source_name(path: str | Path) -> str:
    """A short name of a source for run names and reports: a file's stem, or a dataset's last
    path part (``"my_items"`` for ``data/my_items.jsonl``, ``"boolq"`` for ``google/boolq``)."""
    text = str(path).rstrip("/\\")
    file = Path(text)
    if file.suffix.lower() in SUFFIXES:
        return file.stem
    return file.name or text
