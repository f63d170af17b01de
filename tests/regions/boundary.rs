//! A search circle across the border of two touching service areas: both origins answer, the
//! edge merges their pages in ranking order, and the cursor walks both.
//!
//! The demo cities are 1 200 km apart, farther than a search radius reaches, so the test
//! configures two areas that touch along latitude 50.2 (EUW south of it, EUN north) and moves
//! the EUN cluster's bays (before its origin starts) to just north of that line, 15 km from the
//! Frankfurt fleet. A circle on the line then holds vehicles of both regions.

use std::collections::HashSet;

use super::*;

/// EUW south of latitude 50.2, EUN north of it; they share that edge.
const TOUCHING_AREAS: &str = "EUW=47 5, 50.2 5, 50.2 15, 47 15; EUN=50.2 5, 60 5, 60 15, 50.2 15";
/// The middle of the circle: on the shared edge, north of Frankfurt.
const ON_THE_LINE: (f64, f64) = (50.2, 8.68);
const RADIUS_M: u32 = 25_000;

/// Vehicles of `site` whose bay is within `RADIUS_M` of `ON_THE_LINE`: the oracle.
async fn within(site: &e2e::regions::Site) -> TestResult<Vec<String>> {
    let rows: Vec<(uuid::Uuid, f64, f64)> = sqlx::query_as(
        "select v.id, b.lat, b.lon from vehicles v join parking_bays b on b.id = v.bay_id
          where v.status = 'active'",
    )
    .fetch_all(&site.pool)
    .await?;
    Ok(rows
        .into_iter()
        .filter(|(_, lat, lon)| {
            domain::search::haversine_m(ON_THE_LINE.0, ON_THE_LINE.1, *lat, *lon)
                <= f64::from(RADIUS_M)
        })
        .map(|(id, _, _)| format!("veh_{}_{}", site.region.to_lowercase(), id.simple()))
        .collect())
}

async fn a_search_across_the_boundary_merges_both_regions_in_ranking_order(
    runtime: Runtime,
) -> TestResult {
    let areas = ("SERVICE_AREAS".to_owned(), TOUCHING_AREAS.to_owned());
    let options = WorldOptions {
        edge_vars: vec![areas.clone()],
        origin_vars: vec![areas],
        // Stockholm's bays, shifted as a block to just north of the line (lat 50.25–50.33).
        setup_sql: vec![(
            "EUN",
            "update parking_bays set lat = lat - 59.2930 + 50.25, lon = lon - 18.0586 + 8.6638"
                .to_owned(),
        )],
        ..WorldOptions::default()
    };
    let world = TwoRegions::start(runtime, options).await?;
    let t = token("bodil");
    let w = window(3, 2);
    let mut expected: HashSet<String> = within(&world.euw).await?.into_iter().collect();
    let eun = within(&world.eun).await?;
    assert!(
        expected.len() >= 5 && eun.len() >= 5,
        "the setup must put both fleets in the circle: {} EUW, {} EUN",
        expected.len(),
        eun.len()
    );
    expected.extend(eun);

    for edge in [&world.edge_euw, &world.edge_eun] {
        let path = search_path("v2", ON_THE_LINE, RADIUS_M, w, 5);
        let pages = pages(edge, &path, &t).await?;
        assert!(pages.len() >= 3, "{} pages", pages.len());
        let hits: Vec<&Value> = pages.iter().flatten().collect();
        let ids: Vec<String> = hits
            .iter()
            .filter_map(|h| h["vehicle_id"].as_str().map(str::to_owned))
            .collect();
        let distinct: HashSet<String> = ids.iter().cloned().collect();
        assert_eq!(distinct.len(), ids.len(), "a vehicle twice: {ids:?}");
        assert_eq!(distinct, expected, "via {}", edge.base);
        // One ranking across both regions and all pages: distance first (whole metres).
        let distances: Vec<u64> = hits
            .iter()
            .map(|h| h["distance_m"].as_u64().unwrap_or(u64::MAX))
            .collect();
        assert!(
            distances.windows(2).all(|d| d[0] <= d[1]),
            "not in distance order: {distances:?}"
        );
        // Interleaved, not one region's block after the other's.
        let regions: Vec<String> = ids.iter().map(|id| region_of(id)).collect();
        let switches = regions.windows(2).filter(|r| r[0] != r[1]).count();
        assert!(switches >= 2, "regions not merged: {regions:?}");
    }
    world.stop().await
}
on_both_runtimes!(a_search_across_the_boundary_merges_both_regions_in_ranking_order);
