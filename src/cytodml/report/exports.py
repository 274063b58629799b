"""Objects tables handed to the tools cytometrists and biologists already use: AnnData for scanpy, FCS for gating.

An evaluation's objects (:func:`cytodml.evaluate.objects.evaluation_objects`) and a screened sample's
(:func:`cytodml.predict.predict_sample`) are written beside their Parquet files as

- ``.h5ad`` (AnnData; Virshup et al., JOSS 2024): the embeddings in ``X``, every other column in ``obs`` (class,
  calls, confidences, distances or probabilities, QC flags, subset), the latent map in ``obsm["X_tsne"]`` (or
  ``"X_latent"`` for a 2-D latent space), so that ``scanpy.pl.tsne(adata, color="centroid_call")`` draws it;
- FCS 3.1 (Spidlen et al., Cytometry A 2010, written by flowio): one event per object and one parameter per number.
  Text columns (class, call, subset) become integer codes; the code-to-name table of each is the TEXT keyword
  ``CYTODML_<PARAMETER>`` (``0:basophil;1:eosinophil;...``), since FCS holds numbers only. True/false columns (QC flags,
  ``is_target``) are 0/1. The object number of the instrument's export (:func:`object_numbers`) is parameter
  ``object_number`` where every object has one, so that an IDEAS user gates the calls beside the instrument's own
  features, joined on that number.

Nothing here decides anything: the tables come made, and are only written.
"""

import re
from pathlib import Path

import anndata
import flowio
import numpy as np
import pandas as pd

from cytodml.errors import InputError, require_columns
from cytodml.evaluate.metrics import UNKNOWN_NAME
from cytodml.io import atomic_path

__all__ = ["CODE_KEYWORD", "MAP_KEYS", "fcs_parameters", "object_numbers", "write_fcs", "write_h5ad"]

#: ``obsm`` key of the latent map by its method (:mod:`cytodml.evaluate.latent_map`), as scanpy names its bases
MAP_KEYS = {"t-SNE": "X_tsne", "latent": "X_latent"}
MAP_COLUMNS = ["map_x", "map_y"]
#: the TEXT keyword holding the code table of a coded parameter
CODE_KEYWORD = "CYTODML_{}"
# IDEAS exports one image per object and channel, named "<object number>_Ch<channel>.ome.tif"; the folder source
# keeps "<class>/<number>" as the object id once the channel token is removed (docs/architecture.md, raw.parquet)
CLASS_COLUMN = re.compile(r"(^class_name|^predicted|best_match|_call)$")
IDEAS_NAME = re.compile(r"^(?:[^/]+/)?(\d+)(?:_Ch\d+)?(?:\.ome)?(?:\.tiff?)?$", re.IGNORECASE)


def object_numbers(object_ids) -> np.ndarray | None:
    """The instrument's object number of each object (IDEAS names exported images by it), or None where not every
    object id is one (photographs, montages, arrays)."""
    matches = [IDEAS_NAME.match(str(object_id)) for object_id in object_ids]
    if not matches or not all(matches):
        return None
    return np.array([int(match.group(1)) for match in matches], dtype=np.int64)


def _checked(objects: pd.DataFrame, what: str) -> None:
    require_columns(objects, ("object_id",), what)
    if objects.empty:
        raise InputError(f"{what}: no objects to export")


def write_h5ad(objects: pd.DataFrame, embedding: np.ndarray, path, map_method: str | None = None, uns=None) -> None:
    """``objects`` (one row per object; ``map_x``, ``map_y`` if placed on a map of method ``map_method``) with their
    ``embedding`` (N x D) as an AnnData file; ``uns`` (a dict of plain values) goes to ``adata.uns["cytodml"]``."""
    _checked(objects, f"export {path}")
    embedding = np.asarray(embedding, dtype=np.float32)
    if embedding.ndim != 2 or len(embedding) != len(objects):
        raise InputError(f"export {path}: {len(objects)} objects but embeddings of shape {embedding.shape}")
    obs = objects.drop(columns=[column for column in MAP_COLUMNS if column in objects]).reset_index(drop=True)
    for column in obs.columns:
        if obs[column].dtype == object:
            obs[column] = obs[column].astype(str).astype("category")
    obs.index = pd.Index(objects["object_id"].astype(str).to_numpy(), name="object_id")
    obs = obs.drop(columns="object_id")
    adata = anndata.AnnData(X=embedding, obs=obs)
    adata.obs_names_make_unique()
    adata.var_names = [f"dim_{number}" for number in range(embedding.shape[1])]
    if map_method is not None:
        if map_method not in MAP_KEYS:
            raise InputError(f"export {path}: map method {map_method!r}, expected one of {sorted(MAP_KEYS)}")
        adata.obsm[MAP_KEYS[map_method]] = objects[MAP_COLUMNS].to_numpy(np.float32)
    adata.uns["cytodml"] = dict(uns or {})
    with atomic_path(path) as tmp:
        adata.write_h5ad(Path(tmp))


def _parameter_name(column: str) -> str:
    # FCS 3.1 forbids commas in $PnN; spaces confuse some gating software
    return re.sub(r"[\s,]+", "_", column)


def fcs_parameters(objects: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, str]]:
    """``(values, codes)``: the numeric table written as FCS events (one column per parameter, float) and the
    code table of each coded parameter (``{parameter: "0:name;1:name"}``), as :func:`write_fcs` writes them."""
    values, codes = {}, {}
    numbers = object_numbers(objects["object_id"])
    if numbers is not None:
        values["object_number"] = numbers
    texts = [column for column in objects.columns if column != "object_id" and _is_text(objects[column])]
    # one table for every column of class names (true class, calls, best matches), so that a code means one class
    # throughout the file and across the files of one experiment; "unknown" last
    classes = [column for column in texts if CLASS_COLUMN.search(column)]
    class_names = sorted({str(value) for column in classes for value in objects[column].dropna()} - {UNKNOWN_NAME})
    for column in objects.columns:
        if column == "object_id":
            continue
        series, name = objects[column], _parameter_name(column)
        if column not in texts:
            values[name] = series.to_numpy(np.float64)
            continue
        names = [*class_names, UNKNOWN_NAME] if column in classes else sorted(series.dropna().astype(str).unique())
        code = {text: number for number, text in enumerate(names)}
        values[f"{name}_code"] = series.astype(str).map(code).to_numpy(np.float64)
        codes[f"{name}_code"] = ";".join(f"{number}:{text}" for text, number in code.items())
    return pd.DataFrame(values), codes


def _is_text(series: pd.Series) -> bool:
    return not (series.dtype == bool or pd.api.types.is_numeric_dtype(series))


def write_fcs(objects: pd.DataFrame, path, text: dict | None = None) -> None:
    """``objects`` as an FCS 3.1 file, one event per object (:func:`fcs_parameters`); ``text`` adds TEXT keywords."""
    _checked(objects, f"export {path}")
    values, codes = fcs_parameters(objects)
    if not np.isfinite(values.to_numpy()).all():
        bad = values.columns[~np.isfinite(values.to_numpy()).all(axis=0)].tolist()
        raise InputError(f"export {path}: parameter(s) {bad} hold values that are not finite numbers")
    metadata = {CODE_KEYWORD.format(name.upper()): table for name, table in codes.items()}
    metadata.update({key.upper(): str(value) for key, value in (text or {}).items()})
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        flowio.create_fcs(
            handle,
            values.to_numpy(np.float32).ravel(),
            channel_names=list(values.columns),
            metadata_dict=metadata,
        )
