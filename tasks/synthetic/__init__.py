"""Demo data: offline stand-ins for the real datasets, drawn procedurally and deterministically.

`cartoons` draws avatars in Cartoon Set's exact on-disk format (fetch_cartoons `source: synthetic`);
`faces` draws in-the-wild face photos with exact 68-point landmarks (fetch_faces and prepare_subject
`source: synthetic`). Only the fetch stages import this package: no training stage depends on it.
"""
