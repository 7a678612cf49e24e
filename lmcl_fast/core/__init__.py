"""What training, evaluation and scoring share: the config, checkpoint IO, device / AMP / distributed helpers,
the crop pipeline, crop scoring and pooling, and the quality metric (QualityMetric, load_metric). Imports only ops, models and data."""
