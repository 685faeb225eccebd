import Dashboard
import Foundation
import HTTPTypes
import Hummingbird
import NIOCore

/// The dashboard's page and assets (`DashboardAssets`), served without a token: they hold no data; the page asks
/// for a token before it calls the API.
enum DashboardRoutes {
    static func add(to router: Router<APIContext>, library: ChartLibrary) {
        router.get("/") { _, _ in response(DashboardAssets.index) }
        router.get("/assets/:name") { _, context -> Response in
            let name = context.parameters.get("name") ?? ""
            do {
                guard let file = try DashboardAssets.file(name, library: library) else {
                    throw APIError(.notFound, "no asset \(name)")
                }
                return response(file, cache: true)
            } catch let missing as ChartLibraryMissing {
                throw APIError(.notFound, missing.description)
            }
        }
    }

    static func response(_ file: DashboardAssets.File, cache: Bool = false) -> Response {
        Response(status: .ok, headers: [
            .contentType: file.contentType, .contentLength: String(file.bytes.count),
            .cacheControl: cache ? "max-age=300" : "no-cache",
            HTTPField.Name("X-Content-Type-Options")!: "nosniff",
        ], body: .init(byteBuffer: ByteBuffer(bytes: file.bytes)))
    }
}
