"""Reading inputs: files, books, markup, encodings, archives, records and repositories into
:class:`transforms.documents.TextDocument` s and :class:`transforms.documents.Reject` s."""
