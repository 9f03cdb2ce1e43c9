"""Datasets: readers (VOC, COCO, CSV), the built-in synthetic shapes, TFRecords and the tf.data pipeline."""

from kdetect.data.records import Annotations, Record

__all__ = ["Annotations", "Record"]
