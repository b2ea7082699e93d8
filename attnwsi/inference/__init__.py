"""Running trained models on sub-images and slides, and writing what they predict (CSV, GeoJSON, heatmaps)."""
