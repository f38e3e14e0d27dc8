"""Stage configuration: typed stage configs (`typed`) and params.yaml with its scale profiles (`params`)."""
