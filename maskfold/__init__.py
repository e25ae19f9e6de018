"""maskfold: the code the scripts at the repository's root share. It never imports a script."""
