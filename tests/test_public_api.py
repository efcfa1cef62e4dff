"""The public API: every name exported by ``ccg_layers``, ``ccg_layers.functional`` and
``ccg_layers.datasets`` (recorded before the one-concept-per-file reorganisation) still
imports, with the same parameters (names, kinds, defaults, order). New keyword-only
parameters may be appended; nothing recorded may disappear or change.
"""

from __future__ import annotations

import importlib
import inspect

import pytest

# Recorded from the code of commit 970d54b (before the reorganisation of issue 17), plus the two
# functions main gained with the contrast form (merge 0a45c3d: alike_pairs, contrast_distances)
# and the one memory of L_IR and L_IK (issue 17, point 5: RelationGraphs, relation_graph_losses;
# point 3: commit_memories):
# name -> [(parameter, kind, repr(default))], or None for a non-callable / a class whose
# signature is not a constructor's (modules, constants, TypedDicts, Literals).
API = {
    "ccg_layers": {
        "CCGDTypeError": None,
        "CCGInputError": None,
        "CCGShapeError": None,
        "CCGValueRangeError": None,
        "CrossImageAttention": [
            ("channels", "POSITIONAL_OR_KEYWORD", "<required>"),
            ("qk_channels", "KEYWORD_ONLY", "None"),
            ("heads", "KEYWORD_ONLY", "1"),
            ("scale", "KEYWORD_ONLY", "None"),
            ("mode", "KEYWORD_ONLY", "'pair'"),
            ("gate_init", "KEYWORD_ONLY", "0.0"),
            ("fused", "KEYWORD_ONLY", "None"),
            ("device", "KEYWORD_ONLY", "None"),
            ("dtype", "KEYWORD_ONLY", "None"),
        ],
        "LearnableSampleGraph": [
            ("num_samples", "POSITIONAL_OR_KEYWORD", "None"),
            ("in_channels", "KEYWORD_ONLY", "None"),
            ("form", "KEYWORD_ONLY", "'conditioned'"),
            ("embed_dim", "KEYWORD_ONLY", "64"),
            ("memory_size", "KEYWORD_ONLY", "0"),
            ("memory_dtype", "KEYWORD_ONLY", "None"),
            ("parametrization", "KEYWORD_ONLY", "'softmax'"),
            ("distributed", "KEYWORD_ONLY", "False"),
            ("reduction", "KEYWORD_ONLY", "'mean'"),
            ("seed", "KEYWORD_ONLY", "0"),
            ("device", "KEYWORD_ONLY", "None"),
            ("dtype", "KEYWORD_ONLY", "None"),
        ],
        "MILGridLoss": [
            ("box_weight", "POSITIONAL_OR_KEYWORD", "4.0"),
            ("reduction", "POSITIONAL_OR_KEYWORD", "'mean'"),
            ("noisy_or_floor", "POSITIONAL_OR_KEYWORD", "None"),
        ],
        "RelationGraphs": [
            ("in_channels", "POSITIONAL_OR_KEYWORD", "<required>"),
            ("num_patches", "POSITIONAL_OR_KEYWORD", "<required>"),
        ],
        "PatchHashGraph": [
            ("num_patches", "POSITIONAL_OR_KEYWORD", "<required>"),
            ("in_channels", "POSITIONAL_OR_KEYWORD", "<required>"),
            ("code_bits", "KEYWORD_ONLY", "64"),
            ("parametrization", "KEYWORD_ONLY", "'softmax'"),
            ("reduction", "KEYWORD_ONLY", "'mean'"),
            ("distributed", "KEYWORD_ONLY", "False"),
            ("memory_size", "KEYWORD_ONLY", "0"),
            ("memory_dtype", "KEYWORD_ONLY", "None"),
            ("seed", "KEYWORD_ONLY", "0"),
            ("device", "KEYWORD_ONLY", "None"),
            ("dtype", "KEYWORD_ONLY", "None"),
        ],
        "__version__": None,
        "all_gather_batch": [
            ("x", "POSITIONAL_OR_KEYWORD", "<required>"),
            ("group", "POSITIONAL_OR_KEYWORD", "None"),
        ],
        # issue 17, point 3: the deferred enqueue of the partner memories
        "commit_memories": [("module", "POSITIONAL_OR_KEYWORD", "<required>")],
        "datasets": None,
        "functional": None,
        "metrics": None,
        "set_value_checks": [("enabled", "POSITIONAL_OR_KEYWORD", "<required>")],
        "superpixels": [
            ("images", "POSITIONAL_OR_KEYWORD", "<required>"),
            ("n_segments", "POSITIONAL_OR_KEYWORD", "<required>"),
            ("compactness", "KEYWORD_ONLY", "0.1"),
            ("work_size", "KEYWORD_ONLY", "128"),
            ("num_workers", "KEYWORD_ONLY", "0"),
            ("max_num_iter", "KEYWORD_ONLY", "10"),
        ],
        "superpixels_from_files": [
            ("paths", "POSITIONAL_OR_KEYWORD", "<required>"),
            ("n_segments", "POSITIONAL_OR_KEYWORD", "<required>"),
            ("compactness", "KEYWORD_ONLY", "0.1"),
            ("work_size", "KEYWORD_ONLY", "128"),
            ("num_workers", "KEYWORD_ONLY", "0"),
            ("cache_dir", "KEYWORD_ONLY", "None"),
            ("max_num_iter", "KEYWORD_ONLY", "10"),
        ],
        "value_checks_enabled": [],
    },
    "ccg_layers.functional": {
        "relation_graph_losses": [
            ("features", "POSITIONAL_OR_KEYWORD", "<required>"),
            ("labels", "POSITIONAL_OR_KEYWORD", "<required>"),
            ("sample_weight", "POSITIONAL_OR_KEYWORD", "<required>"),
            ("sample_projection", "POSITIONAL_OR_KEYWORD", "<required>"),
            ("patch_weight", "POSITIONAL_OR_KEYWORD", "<required>"),
            ("patch_projection", "POSITIONAL_OR_KEYWORD", "<required>"),
            ("patch_bias", "POSITIONAL_OR_KEYWORD", "None"),
        ],
        "alike_pairs": [
            ("labels", "POSITIONAL_OR_KEYWORD", "<required>"),
            ("partner_labels", "POSITIONAL_OR_KEYWORD", "None"),
        ],
        "contrast_distances": [
            ("distances", "POSITIONAL_OR_KEYWORD", "<required>"),
            ("alike", "POSITIONAL_OR_KEYWORD", "<required>"),
            ("margin", "POSITIONAL_OR_KEYWORD", "<required>"),
        ],
        "boxes_to_grid": [
            ("boxes", "POSITIONAL_OR_KEYWORD", "<required>"),
            ("image_size", "POSITIONAL_OR_KEYWORD", "<required>"),
            ("grid_size", "POSITIONAL_OR_KEYWORD", "<required>"),
        ],
        "boxes_to_grid_targets": [
            ("boxes", "POSITIONAL_OR_KEYWORD", "<required>"),
            ("box_image_index", "POSITIONAL_OR_KEYWORD", "<required>"),
            ("box_class", "POSITIONAL_OR_KEYWORD", "<required>"),
            ("num_images", "KEYWORD_ONLY", "<required>"),
            ("num_classes", "KEYWORD_ONLY", "<required>"),
            ("image_size", "KEYWORD_ONLY", "<required>"),
            ("grid_size", "KEYWORD_ONLY", "<required>"),
        ],
        "conditioned_graph_logits": [
            ("embeddings", "POSITIONAL_OR_KEYWORD", "<required>"),
            ("weight", "POSITIONAL_OR_KEYWORD", "<required>"),
            ("memory_embeddings", "POSITIONAL_OR_KEYWORD", "None"),
        ],
        "conditioned_sample_graph_loss": [
            ("features", "POSITIONAL_OR_KEYWORD", "<required>"),
            ("weight", "POSITIONAL_OR_KEYWORD", "<required>"),
            ("projection", "POSITIONAL_OR_KEYWORD", "<required>"),
            ("memory_features", "KEYWORD_ONLY", "None"),
            ("memory_embeddings", "KEYWORD_ONLY", "None"),
            ("memory_valid", "KEYWORD_ONLY", "None"),
            ("reduction", "KEYWORD_ONLY", "'mean'"),
        ],
        "cross_image_attention": [
            ("fu", "POSITIONAL_OR_KEYWORD", "<required>"),
            ("fv", "POSITIONAL_OR_KEYWORD", "<required>"),
            ("weight", "POSITIONAL_OR_KEYWORD", "<required>"),
            ("scale", "KEYWORD_ONLY", "1.0"),
            ("fused", "KEYWORD_ONLY", "None"),
        ],
        "get_fused_attn": [],
        "graph_embedding": [
            ("features", "POSITIONAL_OR_KEYWORD", "<required>"),
            ("projection", "POSITIONAL_OR_KEYWORD", "<required>"),
        ],
        "hamming_distance": [
            ("a", "POSITIONAL_OR_KEYWORD", "<required>"),
            ("b", "POSITIONAL_OR_KEYWORD", "<required>"),
        ],
        "hash_codes": [
            ("x", "POSITIONAL_OR_KEYWORD", "<required>"),
            ("projection", "POSITIONAL_OR_KEYWORD", "<required>"),
        ],
        "log_noisy_or": [
            ("logits", "POSITIONAL_OR_KEYWORD", "<required>"),
            ("noisy_or_floor", "KEYWORD_ONLY", "None"),
        ],
        "maps_to_boxes": [
            ("maps", "POSITIONAL_OR_KEYWORD", "<required>"),
            ("threshold", "KEYWORD_ONLY", "0.5"),
            ("image_size", "KEYWORD_ONLY", "None"),
            ("min_area", "KEYWORD_ONLY", "0"),
        ],
        "memory_enqueue_": [
            ("memory", "POSITIONAL_OR_KEYWORD", "<required>"),
            ("pointer", "POSITIONAL_OR_KEYWORD", "<required>"),
            ("count", "POSITIONAL_OR_KEYWORD", "<required>"),
            ("entries", "POSITIONAL_OR_KEYWORD", "<required>"),
        ],
        "mil_grid_loss": [
            ("logits", "POSITIONAL_OR_KEYWORD", "<required>"),
            ("labels", "POSITIONAL_OR_KEYWORD", "<required>"),
            ("grid_targets", "POSITIONAL_OR_KEYWORD", "None"),
            ("box_mask", "POSITIONAL_OR_KEYWORD", "None"),
            ("box_weight", "KEYWORD_ONLY", "4.0"),
            ("reduction", "KEYWORD_ONLY", "'mean'"),
            ("noisy_or_floor", "KEYWORD_ONLY", "None"),
        ],
        "multi_head_cross_image_attention": [
            ("fu", "POSITIONAL_OR_KEYWORD", "<required>"),
            ("fv", "POSITIONAL_OR_KEYWORD", "<required>"),
            ("weight_u", "POSITIONAL_OR_KEYWORD", "<required>"),
            ("weight_v", "POSITIONAL_OR_KEYWORD", "<required>"),
            ("heads", "KEYWORD_ONLY", "1"),
            ("scale", "KEYWORD_ONLY", "1.0"),
            ("fused", "KEYWORD_ONLY", "None"),
        ],
        "normalize_graph": [
            ("logits", "POSITIONAL_OR_KEYWORD", "<required>"),
            ("parametrization", "KEYWORD_ONLY", "'softmax'"),
            ("pairs", "KEYWORD_ONLY", "False"),
            ("valid", "KEYWORD_ONLY", "None"),
        ],
        "paired_sample_loss": [
            ("features_a", "POSITIONAL_OR_KEYWORD", "<required>"),
            ("features_b", "POSITIONAL_OR_KEYWORD", "<required>"),
            ("weights", "POSITIONAL_OR_KEYWORD", "<required>"),
            ("reduction", "KEYWORD_ONLY", "'mean'"),
        ],
        "pairwise_distance": [("features", "POSITIONAL_OR_KEYWORD", "<required>")],
        "partner_attention": [
            ("x", "POSITIONAL_OR_KEYWORD", "<required>"),
            ("weight", "POSITIONAL_OR_KEYWORD", "None"),
            ("weight_u", "POSITIONAL_OR_KEYWORD", "None"),
            ("weight_v", "POSITIONAL_OR_KEYWORD", "None"),
            ("partner_index", "KEYWORD_ONLY", "None"),
            ("heads", "KEYWORD_ONLY", "1"),
            ("scale", "KEYWORD_ONLY", "1.0"),
            ("fused", "KEYWORD_ONLY", "None"),
        ],
        "patch_codes": [
            ("hash_input", "POSITIONAL_OR_KEYWORD", "<required>"),
            ("labels", "POSITIONAL_OR_KEYWORD", "<required>"),
            ("projection", "POSITIONAL_OR_KEYWORD", "<required>"),
            ("num_patches", "POSITIONAL_OR_KEYWORD", "<required>"),
        ],
        "patch_graph_logits": [
            ("codes", "POSITIONAL_OR_KEYWORD", "<required>"),
            ("weight", "POSITIONAL_OR_KEYWORD", "<required>"),
            ("bias", "POSITIONAL_OR_KEYWORD", "None"),
            ("codes_b", "POSITIONAL_OR_KEYWORD", "None"),
        ],
        "patch_hash_graph": [
            ("hash_input", "POSITIONAL_OR_KEYWORD", "<required>"),
            ("labels", "POSITIONAL_OR_KEYWORD", "<required>"),
            ("projection", "POSITIONAL_OR_KEYWORD", "<required>"),
            ("weight", "POSITIONAL_OR_KEYWORD", "<required>"),
            ("bias", "POSITIONAL_OR_KEYWORD", "None"),
            ("hash_input_b", "KEYWORD_ONLY", "None"),
            ("labels_b", "KEYWORD_ONLY", "None"),
            ("memory_codes", "KEYWORD_ONLY", "None"),
            ("memory_valid", "KEYWORD_ONLY", "None"),
            ("parametrization", "KEYWORD_ONLY", "'softmax'"),
        ],
        "patch_hash_graph_loss": [
            ("features", "POSITIONAL_OR_KEYWORD", "<required>"),
            ("labels", "POSITIONAL_OR_KEYWORD", "<required>"),
            ("projection", "POSITIONAL_OR_KEYWORD", "<required>"),
            ("weight", "POSITIONAL_OR_KEYWORD", "<required>"),
            ("bias", "POSITIONAL_OR_KEYWORD", "None"),
            ("hash_input", "KEYWORD_ONLY", "None"),
            ("features_b", "KEYWORD_ONLY", "None"),
            ("labels_b", "KEYWORD_ONLY", "None"),
            ("hash_input_b", "KEYWORD_ONLY", "None"),
            ("memory_features", "KEYWORD_ONLY", "None"),
            ("memory_codes", "KEYWORD_ONLY", "None"),
            ("memory_valid", "KEYWORD_ONLY", "None"),
            ("parametrization", "KEYWORD_ONLY", "'softmax'"),
            ("reduction", "KEYWORD_ONLY", "'mean'"),
        ],
        "sample_graph": [
            ("features", "POSITIONAL_OR_KEYWORD", "<required>"),
            ("weight", "POSITIONAL_OR_KEYWORD", "<required>"),
            ("projection", "POSITIONAL_OR_KEYWORD", "<required>"),
            ("memory_embeddings", "KEYWORD_ONLY", "None"),
            ("memory_valid", "KEYWORD_ONLY", "None"),
        ],
        "sample_graph_loss": [
            ("features", "POSITIONAL_OR_KEYWORD", "<required>"),
            ("graph", "POSITIONAL_OR_KEYWORD", "<required>"),
            ("memory", "KEYWORD_ONLY", "None"),
            ("reduction", "KEYWORD_ONLY", "'mean'"),
        ],
        "set_fused_attn": [("enable", "POSITIONAL_OR_KEYWORD", "True")],
        "superpixel_pool": [
            ("x", "POSITIONAL_OR_KEYWORD", "<required>"),
            ("labels", "POSITIONAL_OR_KEYWORD", "<required>"),
            ("num_segments", "POSITIONAL_OR_KEYWORD", "<required>"),
        ],
        "use_fused_path": [
            ("fused", "POSITIONAL_OR_KEYWORD", "<required>"),
            ("device", "POSITIONAL_OR_KEYWORD", "<required>"),
            ("batch_heads", "POSITIONAL_OR_KEYWORD", "<required>"),
            ("len_u", "POSITIONAL_OR_KEYWORD", "<required>"),
            ("len_v", "POSITIONAL_OR_KEYWORD", "<required>"),
        ],
        "xywh_to_xyxy": [("boxes", "POSITIONAL_OR_KEYWORD", "<required>")],
    },
    "ccg_layers.datasets": {
        "BBOX_LIST_FILE": None,
        "BOXED_CLASSES": None,
        "BOX_FRAME": None,
        "CLASS_NAMES": None,
        "ChestXray14": [
            ("root_or_index", "POSITIONAL_OR_KEYWORD", "<required>"),
            ("image_names", "POSITIONAL_OR_KEYWORD", "None"),
            ("image_size", "KEYWORD_ONLY", "512"),
            ("output", "KEYWORD_ONLY", "'uint8'"),
            ("image_root", "KEYWORD_ONLY", "None"),
            ("skip_bad_images", "KEYWORD_ONLY", "False"),
        ],
        "ChestXray14Batch": None,
        "ChestXray14FormatError": None,
        "ChestXray14Index": [
            ("images", "POSITIONAL_OR_KEYWORD", "<required>"),
            ("labels", "POSITIONAL_OR_KEYWORD", "<required>"),
            ("patient_ids", "POSITIONAL_OR_KEYWORD", "<required>"),
            ("follow_ups", "POSITIONAL_OR_KEYWORD", "<required>"),
            ("view_positions", "POSITIONAL_OR_KEYWORD", "<required>"),
            ("boxes", "POSITIONAL_OR_KEYWORD", "<required>"),
            ("box_image_index", "POSITIONAL_OR_KEYWORD", "<required>"),
            ("box_class", "POSITIONAL_OR_KEYWORD", "<required>"),
            ("root", "POSITIONAL_OR_KEYWORD", "None"),
        ],
        "ChestXray14Sample": None,
        "DATA_ENTRY_FILES": None,
        "IMAGENET_MEAN": None,
        "IMAGENET_STD": None,
        "NUM_FOLDS": None,
        "Setting": None,
        "SyntheticConfig": [
            ("healthy_fraction", "POSITIONAL_OR_KEYWORD", "0.4"),
            ("annotated_fraction", "POSITIONAL_OR_KEYWORD", "0.3"),
            ("second_box_fraction", "POSITIONAL_OR_KEYWORD", "0.1"),
            ("mean_images_per_patient", "POSITIONAL_OR_KEYWORD", "3.0"),
            ("lesion_contrast", "POSITIONAL_OR_KEYWORD", "1.0"),
        ],
        "chestxray14_splits": [
            ("index", "POSITIONAL_OR_KEYWORD", "<required>"),
            ("setting", "POSITIONAL_OR_KEYWORD", "<required>"),
            ("fold", "POSITIONAL_OR_KEYWORD", "0"),
            ("seed", "KEYWORD_ONLY", "0"),
            ("patient_disjoint", "KEYWORD_ONLY", "False"),
        ],
        "collate_chestxray14": [("samples", "POSITIONAL_OR_KEYWORD", "<required>")],
        "ensure_synthetic_dataset": [
            ("directory", "POSITIONAL_OR_KEYWORD", "<required>"),
            ("num_images", "POSITIONAL_OR_KEYWORD", "800"),
            ("seed", "POSITIONAL_OR_KEYWORD", "0"),
            ("image_size", "KEYWORD_ONLY", "512"),
        ],
        "find_image_files": [("image_root", "POSITIONAL_OR_KEYWORD", "<required>")],
        "generate_synthetic_chestxray14": [
            ("out_dir", "POSITIONAL_OR_KEYWORD", "<required>"),
            ("num_images", "POSITIONAL_OR_KEYWORD", "<required>"),
            ("seed", "KEYWORD_ONLY", "0"),
            ("image_size", "KEYWORD_ONLY", "1024"),
            ("config", "KEYWORD_ONLY", "None"),
        ],
        "normalize_radiographs": [
            ("images", "POSITIONAL_OR_KEYWORD", "<required>"),
            ("dtype", "POSITIONAL_OR_KEYWORD", "torch.float32"),
        ],
        "patient_folds": [
            ("patient_ids", "POSITIONAL_OR_KEYWORD", "<required>"),
            ("num_folds", "POSITIONAL_OR_KEYWORD", "<required>"),
            ("seed", "POSITIONAL_OR_KEYWORD", "<required>"),
        ],
        "read_chestxray14": [
            ("root", "POSITIONAL_OR_KEYWORD", "<required>"),
            ("skip_bad_rows", "KEYWORD_ONLY", "False"),
        ],
        "read_radiograph": [
            ("path", "POSITIONAL_OR_KEYWORD", "<required>"),
            ("size", "POSITIONAL_OR_KEYWORD", "None"),
        ],
        "read_split_files": [
            ("train_file", "POSITIONAL_OR_KEYWORD", "<required>"),
            ("test_file", "POSITIONAL_OR_KEYWORD", "<required>"),
            ("index", "POSITIONAL_OR_KEYWORD", "None"),
        ],
        "render_synthetic_image": [
            ("labels", "POSITIONAL_OR_KEYWORD", "<required>"),
            ("boxes", "POSITIONAL_OR_KEYWORD", "<required>"),
            ("image_size", "KEYWORD_ONLY", "1024"),
            ("seed", "KEYWORD_ONLY", "0"),
            ("lesion_contrast", "KEYWORD_ONLY", "1.0"),
        ],
        "save_split": [
            ("split", "POSITIONAL_OR_KEYWORD", "<required>"),
            ("out_dir", "POSITIONAL_OR_KEYWORD", "<required>"),
            ("summary", "POSITIONAL_OR_KEYWORD", "None"),
        ],
        "split_summary": [
            ("index", "POSITIONAL_OR_KEYWORD", "<required>"),
            ("split", "POSITIONAL_OR_KEYWORD", "<required>"),
        ],
        # added after the record (issue 19: the split drawn without generating the twin)
        "synthetic_index": [
            ("num_images", "POSITIONAL_OR_KEYWORD", "<required>"),
            ("seed", "POSITIONAL_OR_KEYWORD", "0"),
            ("config", "KEYWORD_ONLY", "None"),
        ],
        # added after the record (issue 18: one dataset interface, VinDr-CXR and RSNA readers)
        "Combine": None,
        "DICOM_SUFFIXES": None,
        "DatasetFormatError": None,
        "DatasetIndex": None,
        "ImageKind": None,
        "RSNA_CLASS_NAMES": None,
        "RSNA_FRAME": None,
        "RadiographDataset": [
            ("index", "POSITIONAL_OR_KEYWORD", "<required>"),
            ("image_names", "POSITIONAL_OR_KEYWORD", "None"),
            ("image_size", "KEYWORD_ONLY", "512"),
            ("output", "KEYWORD_ONLY", "'uint8'"),
            ("image_root", "KEYWORD_ONLY", "None"),
            ("skip_bad_images", "KEYWORD_ONLY", "False"),
        ],
        "RadiographIndex": [
            ("dataset_name", "POSITIONAL_OR_KEYWORD", "<required>"),
            ("images", "POSITIONAL_OR_KEYWORD", "<required>"),
            ("labels", "POSITIONAL_OR_KEYWORD", "<required>"),
            ("patient_ids", "POSITIONAL_OR_KEYWORD", "<required>"),
            ("boxes", "POSITIONAL_OR_KEYWORD", "<required>"),
            ("box_image_index", "POSITIONAL_OR_KEYWORD", "<required>"),
            ("box_class", "POSITIONAL_OR_KEYWORD", "<required>"),
            ("image_sizes", "POSITIONAL_OR_KEYWORD", "<required>"),
            ("class_names", "POSITIONAL_OR_KEYWORD", "<required>"),
            ("boxed_classes", "POSITIONAL_OR_KEYWORD", "<required>"),
            ("files", "POSITIONAL_OR_KEYWORD", "<required>"),
            ("has_patient_ids", "POSITIONAL_OR_KEYWORD", "False"),
            ("root", "POSITIONAL_OR_KEYWORD", "None"),
            (
                "image_suffixes",
                "POSITIONAL_OR_KEYWORD",
                "('.dicom', '.dcm', '.png', '.jpg', '.jpeg')",
            ),
        ],
        "VINDR_CLASS_NAMES": None,
        "VINDR_NO_FINDING": None,
        "boxes_at_size": [
            ("index", "POSITIONAL_OR_KEYWORD", "<required>"),
            ("size", "POSITIONAL_OR_KEYWORD", "<required>"),
        ],
        "dataset_splits": [
            ("index", "POSITIONAL_OR_KEYWORD", "<required>"),
            ("setting", "POSITIONAL_OR_KEYWORD", "<required>"),
            ("fold", "POSITIONAL_OR_KEYWORD", "0"),
            ("seed", "KEYWORD_ONLY", "0"),
            ("patient_disjoint", "KEYWORD_ONLY", "False"),
        ],
        "dicom_frame_size": [("path", "POSITIONAL_OR_KEYWORD", "<required>")],
        "dicom_to_unit": [
            ("ds", "POSITIONAL_OR_KEYWORD", "<required>"),
            ("where", "POSITIONAL_OR_KEYWORD", "'DICOM'"),
        ],
        "fuse_boxes": [
            ("boxes", "POSITIONAL_OR_KEYWORD", "<required>"),
            ("iou_threshold", "POSITIONAL_OR_KEYWORD", "0.5"),
        ],
        "read_dicom": [
            ("path", "POSITIONAL_OR_KEYWORD", "<required>"),
            ("size", "POSITIONAL_OR_KEYWORD", "None"),
        ],
        "read_image": [
            ("path", "POSITIONAL_OR_KEYWORD", "<required>"),
            ("size", "POSITIONAL_OR_KEYWORD", "None"),
        ],
        # issue 18: the DICOM sizes of resized VinDr-CXR copies
        "read_frame_sizes": [
            ("path", "POSITIONAL_OR_KEYWORD", "<required>"),
            ("id_column", "KEYWORD_ONLY", "'image_id'"),
        ],
        "read_rsna_pneumonia": [
            ("root", "POSITIONAL_OR_KEYWORD", "<required>"),
            ("images", "KEYWORD_ONLY", "'auto'"),
            ("image_dir", "KEYWORD_ONLY", "None"),
            ("csv_file", "KEYWORD_ONLY", "'stage_2_train_labels.csv'"),
            ("frame_sizes", "KEYWORD_ONLY", "None"),
            ("skip_bad_rows", "KEYWORD_ONLY", "False"),
        ],
        "read_vindr_cxr": [
            ("root", "POSITIONAL_OR_KEYWORD", "<required>"),
            ("combine", "KEYWORD_ONLY", "'merge'"),
            ("iou_threshold", "KEYWORD_ONLY", "0.5"),
            ("images", "KEYWORD_ONLY", "'auto'"),
            ("image_dir", "KEYWORD_ONLY", "None"),
            ("csv_file", "KEYWORD_ONLY", "'train.csv'"),
            ("frame_sizes", "KEYWORD_ONLY", "None"),
            ("skip_bad_rows", "KEYWORD_ONLY", "False"),
        ],
    },
}


def _params(obj: object) -> list[tuple[str, str, str]]:
    out = []
    for p in inspect.signature(obj).parameters.values():  # type: ignore[arg-type]
        default = "<required>" if p.default is inspect.Parameter.empty else repr(p.default)
        out.append((p.name, p.kind.name, default))
    return out


@pytest.mark.parametrize("module_name", sorted(API))
def test_exported_names_unchanged(module_name):
    module = importlib.import_module(module_name)
    assert sorted(module.__all__) == sorted(API[module_name])
    for name in API[module_name]:
        assert getattr(module, name) is not None, name


@pytest.mark.parametrize(
    ("module_name", "name"),
    [(m, n) for m in sorted(API) for n, spec in sorted(API[m].items()) if spec is not None],
)
def test_signatures_unchanged(module_name, name):
    obj = getattr(importlib.import_module(module_name), name)
    recorded = [tuple(p) for p in API[module_name][name]]
    now = _params(obj)
    # positional parameters: the same, in the same order
    positional = [p for p in recorded if p[1] != "KEYWORD_ONLY"]
    assert [p for p in now if p[1] != "KEYWORD_ONLY"] == positional
    # keyword-only parameters (their order does not matter to a call): all still there, with
    # the same defaults; anything new is optional, so old calls behave the same
    keywords = {p[0]: p for p in now if p[1] == "KEYWORD_ONLY"}
    for p in recorded:
        if p[1] == "KEYWORD_ONLY":
            assert keywords.pop(p[0], None) == p, p
    for pname, (_, _, default) in keywords.items():
        assert default != "<required>", pname
