// app/build.gradle.kts: the parts an app needs to run the default all-MiniLM-L6-v2 bundles.
// Each version is the one edgeopt verified the bundle with (manifest.json "toolchain"); the bundle's
// README.md prints the same line. Keep only the runtime of the bundle you ship.

android {
    defaultConfig {
        minSdk = 24
        ndk { abiFilters += listOf("arm64-v8a") }
    }
    // Assets are compressed by default; the runtimes memory-map the model, so store it uncompressed.
    androidResources {
        noCompress += listOf("onnx", "ort", "pte", "tflite")
    }
}

dependencies {
    // ONNX Runtime (model.onnx / model.ort)
    implementation("com.microsoft.onnxruntime:onnxruntime-android:1.31.1")
    // ExecuTorch (model.pte, XNNPACK)
    implementation("org.pytorch:executorch-android:1.5.1")
    // LiteRT (model.tflite): Interpreter and CompiledModel APIs
    implementation("com.google.ai.edge.litert:litert:2.3.0")
}
