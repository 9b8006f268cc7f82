"""Code structure: import resolution, dependency order of a repository's files, duplicate
files, and the model-free long-dependency score."""
