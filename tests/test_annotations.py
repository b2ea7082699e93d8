"""QuPath GeoJSON lesion annotations and the sub-image label rule (highest-risk lesion wins)."""

import json

import numpy as np
import pytest

from attnwsi.data.annotations import Lesion, read_lesions, sub_image_label

CLASSES = ["normal", "be_no_dysplasia", "be_with_dysplasia", "adenocarcinoma"]


def feature(geometry: dict, name: str | None, **properties) -> dict:
    if name is not None:
        properties["classification"] = {"name": name, "color": [200, 0, 0]}
    return {"type": "Feature", "geometry": geometry, "properties": {"objectType": "annotation", **properties}}


def polygon(x0, y0, x1, y1) -> list:
    return [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]]


def write(tmp_path, data, name="slide.geojson"):
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def test_polygon_multipolygon_and_rectangle_are_read(tmp_path):
    triangle = [[[100, 100], [300, 100], [200, 250], [100, 100]]]
    features = [
        feature({"type": "Polygon", "coordinates": triangle}, "be_no_dysplasia"),
        feature({"type": "MultiPolygon", "coordinates": [polygon(0, 0, 10, 10), polygon(50, 60, 70, 90)]},
                "adenocarcinoma"),
        # QuPath's rectangle tool: a 4-corner Polygon, its ROI type in the properties
        feature({"type": "Polygon", "coordinates": polygon(400, 500, 460, 530)}, "be_with_dysplasia",
                roiType="Rectangle", isLocked=False),
    ]
    lesions = read_lesions(write(tmp_path, {"type": "FeatureCollection", "features": features}), CLASSES)
    assert [lesion.name for lesion in lesions] == ["be_no_dysplasia", "adenocarcinoma", "be_with_dysplasia"]
    assert lesions[0].box == (100, 100, 200, 150)
    assert len(lesions[1].outlines) == 2 and lesions[1].box == (0, 0, 70, 90)
    assert lesions[2].box == (400, 500, 60, 30)


def test_a_bare_list_of_features_is_read_and_unclassified_features_and_detections_are_skipped(tmp_path):
    features = [
        feature({"type": "Polygon", "coordinates": polygon(0, 0, 5, 5)}, None),  # e.g. a tissue outline
        feature({"type": "Polygon", "coordinates": polygon(0, 0, 5, 5)}, "Tumor", objectType="detection"),
        feature({"type": "Point", "coordinates": [3, 3]}, None),
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": polygon(1, 2, 3, 4)},
         "properties": {"classification": "adenocarcinoma"}},  # an older export: the class as a string
    ]
    lesions = read_lesions(write(tmp_path, features), CLASSES)
    assert [(lesion.name, lesion.box) for lesion in lesions] == [("adenocarcinoma", (1, 2, 2, 2))]


def test_an_unknown_class_names_the_file_and_the_class(tmp_path):
    tumour = feature({"type": "Polygon", "coordinates": polygon(0, 0, 5, 5)}, "Tumor")
    path = write(tmp_path, {"type": "FeatureCollection", "features": [tumour]}, "s7.geojson")
    with pytest.raises(ValueError, match=r"s7\.geojson.*'Tumor'"):
        read_lesions(path, CLASSES)


def test_a_lesion_that_is_not_an_area_is_an_error(tmp_path):
    line = feature({"type": "LineString", "coordinates": [[0, 0], [5, 5]]}, "adenocarcinoma")
    path = write(tmp_path, [line])
    with pytest.raises(ValueError, match=r"slide\.geojson.*LineString"):
        read_lesions(path, CLASSES)


def test_intersection_follows_the_outline_not_its_bounding_box():
    ell = Lesion("adenocarcinoma", [np.array([[0, 0], [100, 0], [100, 20], [20, 20], [20, 100], [0, 100]])])
    assert not ell.intersects((50, 50, 40, 40))  # inside the bounding box, in the notch of the L
    assert ell.intersects((50, 10, 40, 40))  # across the L's foot
    assert ell.intersects((5, 5, 5, 5))  # inside the L
    assert ell.intersects((-10, -10, 200, 200))  # around all of it
    assert not ell.intersects((200, 200, 10, 10))


def test_the_highest_risk_lesion_wins_none_is_normal_and_unannotated_takes_the_slide_label():
    lesions = [Lesion("be_no_dysplasia", [np.array(polygon(0, 0, 100, 100)[0])]),
               Lesion("be_with_dysplasia", [np.array(polygon(150, 0, 200, 100)[0])]),
               Lesion("normal", [np.array(polygon(0, 300, 100, 400)[0])])]
    assert sub_image_label((0, 0, 300, 300), lesions, CLASSES, "adenocarcinoma") == "be_with_dysplasia"
    assert sub_image_label((0, 0, 120, 120), lesions, CLASSES, "adenocarcinoma") == "be_no_dysplasia"
    assert sub_image_label((500, 500, 50, 50), lesions, CLASSES, "adenocarcinoma") == "normal"
    assert sub_image_label((0, 250, 50, 50), lesions, CLASSES, "adenocarcinoma") == "normal"
    assert sub_image_label((500, 500, 50, 50), [], CLASSES, "adenocarcinoma") == "normal"  # annotated, empty
    assert sub_image_label((0, 0, 300, 300), None, CLASSES, "adenocarcinoma") == "adenocarcinoma"
