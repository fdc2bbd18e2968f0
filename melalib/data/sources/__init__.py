"""The sources of the canonical `LesionTable`: one module per public dataset (`isic2020`,
`isic2019`, `ham10000`, `milk10k`, `isic2024`), the multi-source merges (`merge`), the user's
own data (`custom`: a CSV; `image_folder`: class folders) and the canonical frame they all
build (`canonical`). `melalib.data.load` picks one by the config's ``dataset``."""
