"""MedMNIST v2 (Yang et al., Scientific Data 2023) from the official .npz files: data.root is the file, or the
folder holding `<data.subset>.npz` (e.g. breastmnist.npz). Grayscale or RGB; official train/val/test splits."""

from __future__ import annotations

import re
from pathlib import Path

from ..config import DataConfig
from ..errors import DataError
from ..registry import register_dataset
from .arrays import read_npz
from .base import Dataset

# Label names of the 2D single-label subsets (from the MedMNIST v2 INFO table); others get "0".."K-1".
_ORGAN = ["bladder", "femur-left", "femur-right", "heart", "kidney-left", "kidney-right", "liver", "lung-left",
          "lung-right", "pancreas", "spleen"]
CLASS_NAMES = {
    "breastmnist": ["malignant", "normal, benign"],
    "pneumoniamnist": ["normal", "pneumonia"],
    "bloodmnist": ["basophil", "eosinophil", "erythroblast", "immature granulocytes", "lymphocyte", "monocyte",
                   "neutrophil", "platelet"],
    "pathmnist": ["adipose", "background", "debris", "lymphocytes", "mucus", "smooth muscle",
                  "normal colon mucosa", "cancer-associated stroma", "colorectal adenocarcinoma epithelium"],
    "organamnist": _ORGAN,
    "organcmnist": _ORGAN,
    "organsmnist": _ORGAN,
    "tissuemnist": ["Collecting Duct, Connecting Tubule", "Distal Convoluted Tubule", "Glomerular endothelial cells",
                    "Interstitial endothelial cells", "Leukocytes", "Podocytes", "Proximal Tubule Segments",
                    "Thick Ascending Limb"],
    "dermamnist": ["actinic keratoses and intraepithelial carcinoma", "basal cell carcinoma",
                   "benign keratosis-like lesions", "dermatofibroma", "melanoma", "melanocytic nevi",
                   "vascular lesions"],
    "octmnist": ["choroidal neovascularization", "diabetic macular edema", "drusen", "normal"],
}


def class_names(subset: str) -> list[str] | None:
    """Names for a subset; MedMNIST+ files carry the image size (breastmnist_128), which does not change them."""
    names = CLASS_NAMES.get(re.sub(r"_\d+$", "", subset))
    return list(names) if names else None


@register_dataset("medmnist")
def load(cfg: DataConfig) -> Dataset:
    root = Path(cfg.root).expanduser()
    subset = cfg.subset.lower()
    if root.suffix == ".npz":
        path = root
        subset = subset or root.stem.lower()
    else:
        if not subset:
            raise DataError(
                f"data.subset is empty: set it to the MedMNIST file to read from {root} (e.g. data.subset=breastmnist"
                " reads breastmnist.npz), or point data.root at the .npz file."
            )
        path = root / f"{subset}.npz"
        if not path.is_file():
            raise DataError(
                f"{path} not found. Put the official MedMNIST file {subset}.npz (from the MedMNIST v2 release, "
                f"zenodo.org record 10519652) in {root.resolve()}, or set data.root to the file."
            )
    return read_npz(path, subset or "medmnist", class_names(subset))
