"""``l2reason models``: the packaged (offline) models and whether they are installed and converted."""

from __future__ import annotations

from typing import Any

from l2reason.cli._common import JsonOpt, app, console, print_json, table, text


def packaged_status() -> list[dict[str, Any]]:
    """One record per packaged model: spec, aliases, model id, installed, converted, the install command, notes."""
    from l2reason.errors import ModelSourceError
    from l2reason.models.load import CONVERTED_MARKER, converted_dir
    from l2reason.models.registry import PACKAGED

    out = []
    for m in PACKAGED.values():
        try:
            m.package_dirs()
            installed = True
        except ModelSourceError:
            installed = False
        out.append(
            {
                "spec": f"packaged:{m.name}",
                "aliases": list(m.aliases),
                "model_id": m.model_id,
                "installed": installed,
                "converted": (converted_dir(m) / CONVERTED_MARKER).is_file(),
                "install": None if installed else m.install_hint(),
                "notes": m.notes,
            }
        )
    return out


@app.command()
def models(as_json: JsonOpt = False) -> None:
    """List the packaged (offline) models and whether they are installed/converted."""
    rows = packaged_status()
    if as_json:
        print_json(rows)
        return
    t = table("packaged models", ("spec", "aliases", "installed", "converted"))
    for r in rows:
        t.add_row(
            text(r["spec"]),
            text(", ".join(r["aliases"])),
            "yes" if r["installed"] else "no",
            "yes" if r["converted"] else "no",
        )
    console.print(t)
    console.print("notes:")
    for r in rows:  # long values go below the table, one line each (a wrapped command still copies whole)
        console.print(text(f"  {r['notes']}"))
    for r in rows:
        if r["install"]:
            console.print(text(f"install {r['spec']}: {r['install']}"), soft_wrap=True)
