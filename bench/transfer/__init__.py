"""Detection transfer: COCO-format data, detector backends and COCO evaluation."""
