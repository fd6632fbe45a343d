"""Image bytes: where finished images are kept and how clients are allowed to fetch them."""
