// swift-tools-version:5.9
// SwiftPM: ExecuTorch (model.pte) and, instead of the pod, ONNX Runtime (model.onnx).
// Versions are the ones edgeopt verified the bundles with (manifest.json "toolchain").
import PackageDescription

let package = Package(
  name: "EdgeoptDemo",
  platforms: [.iOS(.v17), .macOS(.v12)],
  products: [.library(name: "EdgeoptDemo", targets: ["EdgeoptDemo"])],
  dependencies: [
    // ExecuTorch: the branch names the release (swiftpm-<executorch version>)
    .package(url: "https://github.com/pytorch/executorch.git", branch: "swiftpm-1.5.1"),
    .package(url: "https://github.com/microsoft/onnxruntime-swift-package-manager", exact: "1.31.1"),
  ],
  targets: [
    .target(
      name: "EdgeoptDemo",
      dependencies: [
        .product(name: "executorch", package: "executorch"),
        .product(name: "backend_xnnpack", package: "executorch"),
        .product(name: "kernels_optimized", package: "executorch"),
        .product(name: "kernels_quantized", package: "executorch"),
        .product(name: "onnxruntime", package: "onnxruntime-swift-package-manager"),
      ],
      // Sources/EdgeoptDemo/: OnnxRuntimeEmbedder.swift, ExecuTorchEmbedder.swift (LiteRtEmbedder.swift uses the pod)
      // the backend and kernels register themselves in static initialisers: keep them linked
      linkerSettings: [.unsafeFlags(["-all_load"])]
    ),
  ]
)
