"""`hft push --with-onnx EXPORT_DIR`: an `hft export` folder as uploads under `onnx/` of the same commit, and the
facts of the card's ONNX section.

Which files an export holds and what its report says is deploy/report.py's contract (`onnx_publication`); here the
export is checked to come from the run being pushed, and its JSON files lose local paths as the model files do.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hftoolkit.errors import PushError
from hftoolkit.publish.checks import file_problem
from hftoolkit.publish.uploads import Upload, json_bytes, public_name_or_path
from hftoolkit.run.records import read_json_file

if TYPE_CHECKING:
    from hftoolkit.publish.inspect import RunFacts


@dataclass
class OnnxPart:
    uploads: list[Upload]  # every file of the export, under onnx/
    card: dict[str, Any]  # the card's ONNX section, escaped for the template (card_section)


def onnx_part(export_dir: str | Path, facts: RunFacts) -> OnnxPart:
    """The export's uploads and card facts; an export of another run (or an incomplete one) is refused."""
    from hftoolkit.deploy.report import onnx_publication

    folder = Path(export_dir)
    publication = onnx_publication(folder)
    run_name = facts.run.path.resolve().name
    if publication.task != facts.recipe.task or publication.run_id != facts.manifest.run_id:
        raise PushError(
            f"--with-onnx {folder} is an export of {publication.source} ({publication.task}), not of the run "
            f"{run_name} being pushed; export this run first: `hft export {facts.run.path} --onnx DIR`"
        )
    problems = [p for p in (file_problem(local, f"{folder}/{local.name}") for _, local in publication.uploads) if p]
    if problems:
        raise PushError(f"refusing to push --with-onnx {folder}: " + "; ".join(problems))
    uploads = [_upload(path_in_repo, local, folder.name) for path_in_repo, local in publication.uploads]
    return OnnxPart(uploads, card_section(publication.card))


def card_section(card: dict[str, Any]) -> dict[str, Any]:
    """The ONNX section's values (files, parity, metric table), each escaped for where the template puts it."""
    from hftoolkit.publish.escape import code_span, md_text

    parity, rows = card["parity"], card["metrics"]
    names = [name for name in rows[0] if name != "runtime"] if rows else []
    drop = card["metric_drop_points"]
    return {
        "files": [(code_span(name), f"{_number(size, ',')} bytes") for name, size in card["files"].items()],
        "opset": md_text(card["opset"]),
        "split": md_text(card["split"]),
        "examples": md_text(parity["examples"]),
        "max_abs_diff": _number(parity["max_abs_diff"], ".2e"),
        "max_diff": _number(parity["max_diff"], "g"),
        "argmax_agreement": _number(parity["argmax_agreement"], ".1%"),
        "metric_header": [md_text(name) for name in names],
        "metric_rows": [[md_text(row["runtime"]), *(_number(row.get(n), ".4f") for n in names)] for row in rows],
        "drop_points": None if drop is None else _number(drop, ".2f"),
    }


def _number(value: Any, spec: str) -> str:
    """A number as `spec` formats it; anything else (a hand-edited report) as literal text."""
    from hftoolkit.publish.escape import md_text

    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return format(value, spec)
    return md_text(value)


def _upload(path_in_repo: str, local: Path, folder_name: str) -> Upload:
    origin = f"{folder_name}/{local.name}"
    short = public_name_or_path(local) if local.suffix == ".json" else None
    if short is None:
        return Upload(path_in_repo, origin, file=local)
    # The export's config.json is the run's own, which transformers may have stamped with a local folder.
    data = read_json_file(local)
    data["_name_or_path"] = short
    return Upload(path_in_repo, f"{origin} (_name_or_path shortened)", data=json_bytes(data))
