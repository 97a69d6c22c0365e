"""The REST API's OpenAPI document, generated from the compiled proto (`make gen`)."""
