use super::*;

/// A trimmed OpenAPI 3.0 document in Stripe's style: `nullable`, a
/// response by `$ref`, an enum, a component reaching another.
const OPENAPI_30: &str = r##"
openapi: 3.0.0
info: {title: carrier, version: "1"}
paths:
  /v1/shipments/{id}:
    get:
      operationId: GetShipment
      responses:
        "200": {$ref: "#/components/responses/shipment"}
        default:
          content: {application/json: {schema: {$ref: "#/components/schemas/error"}}}
    post:
      operationId: UpdateShipment
      responses:
        "201":
          content:
            application/json; charset=utf-8:
              schema: {type: object, required: [id]}
components:
  responses:
    shipment:
      content: {application/json: {schema: {$ref: "#/components/schemas/shipment"}}}
  schemas:
    shipment:
      type: object
      required: [id, status]
      properties:
        id: {type: string}
        status: {type: string, enum: [CREATED, DELIVERED]}
        weight: {type: number, nullable: true, minimum: 0, exclusiveMinimum: true}
        carrier: {nullable: true, anyOf: [{$ref: "#/components/schemas/carrier"}]}
    carrier: {type: object, properties: {name: {type: string}}}
    error: {type: object}
    unused: {type: object}
"##;

#[test]
fn an_operation_gives_its_response_schema_with_the_components_it_reaches() {
    let schema = schema_from(OPENAPI_30, Some("GetShipment"), &[]).unwrap();
    assert_eq!(
        schema["allOf"][0],
        json!({"$ref": "#/components/schemas/shipment"})
    );
    let kept: Vec<&String> = schema["components"]["schemas"]
        .as_object()
        .unwrap()
        .keys()
        .collect();
    assert_eq!(kept, ["carrier", "shipment"], "not error, not unused");
    assert!(schema["components"].get("responses").is_none());
    let weight = &schema["components"]["schemas"]["shipment"]["properties"]["weight"];
    assert_eq!(
        weight,
        &json!({"type": ["number", "null"], "exclusiveMinimum": 0})
    );
    let carrier = &schema["components"]["schemas"]["shipment"]["properties"]["carrier"];
    assert_eq!(
        carrier,
        &json!({"anyOf": [{"anyOf": [{"$ref": "#/components/schemas/carrier"}]}, {"type": "null"}]})
    );
}

#[test]
fn the_result_validates_as_the_document_means() {
    let schema = schema_from(OPENAPI_30, Some("GetShipment"), &[]).unwrap();
    let validator = sluice_contract::config::JsonSchema::new(schema)
        .unwrap()
        .validator();
    let ok = json!({"id": "s1", "status": "CREATED", "weight": null, "carrier": null});
    assert!(validator.is_valid(&ok), "nullable fields take null");
    let drifted = json!({"id": "s1", "status": "RETURNED_TO_SENDER", "weight": 0});
    let errors: Vec<String> = validator
        .iter_errors(&drifted)
        .map(|e| e.schema_path().to_string())
        .collect();
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(
        errors
            .iter()
            .any(|p| p.ends_with("/properties/status/enum")),
        "{errors:?}"
    );
    assert!(
        errors
            .iter()
            .any(|p| p.ends_with("/properties/weight/exclusiveMinimum")),
        "{errors:?}"
    );
}

#[test]
fn a_listed_status_picks_its_response_and_media_types_may_have_parameters() {
    let schema = schema_from(OPENAPI_30, Some("UpdateShipment"), &[]).unwrap();
    assert_eq!(
        schema,
        json!({"allOf": [{"type": "object", "required": ["id"]}]})
    );
    let error = schema_from(OPENAPI_30, Some("GetShipment"), &[404]).unwrap();
    assert_eq!(
        error["allOf"][0],
        json!({"$ref": "#/components/schemas/error"}),
        "404 falls to default"
    );
}

#[test]
fn a_plain_json_schema_is_kept_and_openapi_31_is_not_rewritten() {
    let plain = schema_from("{type: object, required: [id]}", None, &[]).unwrap();
    assert_eq!(plain, json!({"type": "object", "required": ["id"]}));
    let v31 = r#"{"openapi": "3.1.0", "paths": {"/a": {"get": {"operationId": "a", "responses": {"200": {"content": {"application/json": {"schema": {"type": ["string", "null"], "nullable": true}}}}}}}}}"#;
    let schema = schema_from(v31, Some("a"), &[]).unwrap();
    assert_eq!(
        schema["allOf"][0],
        json!({"type": ["string", "null"], "nullable": true}),
        "3.1 is JSON Schema: nullable is only an unknown keyword there"
    );
}

#[test]
fn what_cannot_be_used_says_why() {
    let cases = [
        (OPENAPI_30, None, "needs operationId"),
        (
            OPENAPI_30,
            Some("Nope"),
            "no operation has operationId \"Nope\"",
        ),
        (
            "{type: object}",
            Some("GetShipment"),
            "applies to an OpenAPI document",
        ),
        ("openapi: 2.0\npaths: {}", Some("x"), "only 3.x"),
        (
            "{swagger: '2.0', paths: {}}",
            Some("x"),
            "Swagger 2.0 is not supported",
        ),
        ("{openapi: 3.0.0}", Some("x"), "has no paths"),
        (": [", None, "not YAML or JSON"),
        (
            "{openapi: 3.0.0, paths: {/a: {get: {operationId: a, responses: {'200': {content: {text/html: {}}}}}}}}",
            Some("a"),
            "has no JSON schema",
        ),
        (
            "{openapi: 3.0.0, paths: {/a: {get: {operationId: a, responses: {'200': {content: {application/json: {schema: {$ref: 'https://x/s.json'}}}}}}}}}",
            Some("a"),
            "remote references are not fetched",
        ),
        (
            "{openapi: 3.0.0, paths: {/a: {get: {operationId: a, responses: {'500': {}}}}}}",
            Some("a"),
            "documents no response for 2XX, default",
        ),
    ];
    for (text, operation, wanted) in cases {
        let error = schema_from(text, operation, &[]).unwrap_err();
        assert!(error.contains(wanted), "{wanted:?} not in {error:?}");
    }
}

#[test]
fn a_reference_cycle_ends() {
    let cyclic = "{openapi: 3.0.3, paths: {/a: {get: {operationId: a, responses: {'200': {content: {application/json: {schema: {$ref: '#/components/schemas/node'}}}}}}}}, components: {schemas: {node: {type: object, properties: {next: {$ref: '#/components/schemas/node'}}}}}}";
    let schema = schema_from(cyclic, Some("a"), &[]).unwrap();
    assert_eq!(
        schema["components"]["schemas"].as_object().unwrap().len(),
        1
    );
    sluice_contract::config::JsonSchema::new(schema).expect("a recursive schema compiles");
}
